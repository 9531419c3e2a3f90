// Launchers of the CUDA quantized KV cache (layout: kernels/cuda/kv_cache_layout.h): the cache write
// (fp32 / bf16 K and V rows -> paged 4/8-bit rows, bit-identical to kv_write_reference) and decode
// attention over a block table. Plain C++ declarations, plain pointers, no torch types.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/kv_cache_layout.h"

namespace resq::gpu {

// Cache write of K and V (all pointers on the device):
//   k, v          [tokens][ldkv] elements: token t's row of KV head h is at t * ldkv + h * head_dim
//                 (ldkv >= num_kv_heads * head_dim, 0 = that; e.g. strided views into a fused qkv)
//   slot_mapping  int64 [tokens]: destination slot (block * 16 + row); negative = skip (padding);
//                 slots >= layout.num_slots() are not checked on the host and are skipped on the
//                 device (no write), like the negative ones
//   k_cache, v_cache  uint8 [layout.buffer_bytes()] each, 16-byte aligned
// Every written row equals kv_write_reference(..., k_clip / v_clip) byte for byte, including its
// padding. Throws ShapeError / ConfigError (clip outside (0, 1]) / UnsupportedError (head_dim above
// kMaxKvHeadDim, device older than sm_80, no kernel image) before any launch; CudaError.
void kv_cache_write_cuda(const float* k, const float* v, int64_t tokens, int64_t ldkv,
                         const int64_t* slot_mapping, const KvCacheLayout& layout, float k_clip, float v_clip,
                         uint8_t* k_cache, uint8_t* v_cache, cudaStream_t stream);
// k, v: bf16 bits, converted exactly to fp32 first (so the reference of the fp32 values applies).
void kv_cache_write_bf16_cuda(const uint16_t* k, const uint16_t* v, int64_t tokens, int64_t ldkv,
                              const int64_t* slot_mapping, const KvCacheLayout& layout, float k_clip,
                              float v_clip, uint8_t* k_cache, uint8_t* v_cache, cudaStream_t stream);

// Decode attention (args: KvDecodeArgs, device pointers; out fp32 [num_seqs][num_q_heads][hd]).
// One CTA of kKvAttnWarps warps per (sequence, query head). context_lens and block_tables are read
// on the device only: a length is clamped to [0, max_blocks_per_seq * 16] and block ids are
// trusted (as in vLLM). Agrees with kv_decode_attention_reference to fp32 rounding (the summation
// order differs: per-lane partial dots + a butterfly, an online softmax per warp, then a merge).
// Throws like kv_cache_write_cuda.
void kv_decode_attention_cuda(const KvDecodeArgs& args, const KvCacheLayout& layout, const uint8_t* k_cache,
                              const uint8_t* v_cache, cudaStream_t stream);

}  // namespace resq::gpu
