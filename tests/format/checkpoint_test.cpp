// Tests of the packed checkpoint (resq/format/checkpoint.h): write -> read round trips bit-exactly,
// sizes against the bit budget, sharding, and the atomic, streamed, no-replace writer. The reader's
// rejection of malformed checkpoints is checkpoint_malformed_test.cpp.
// Torch-free, so it also runs under AddressSanitizer (RESQ_SANITIZE=ON, see .ci/run).
#include "format/checkpoint_fixture.h"

namespace resq::format {
namespace {

TEST(CheckpointSiteSpec, SiteDimsFollowTheConfig) {
  const ModelConfig c = tiny_config();  // d 16, 2 heads x 8, 1 kv head, ffn 24
  EXPECT_EQ(site_dims(c, SiteKind::kQ), std::make_pair(int64_t{16}, int64_t{16}));
  EXPECT_EQ(site_dims(c, SiteKind::kV), std::make_pair(int64_t{8}, int64_t{16}));
  EXPECT_EQ(site_dims(c, SiteKind::kUp), std::make_pair(int64_t{24}, int64_t{16}));
  EXPECT_EQ(site_dims(c, SiteKind::kDown), std::make_pair(int64_t{16}, int64_t{24}));
}

TEST(CheckpointSiteSpec, PackedColumnOrderPutsHighColumnsLast) {
  SiteSpec o;
  o.K = 16;
  o.high_rule = HighRule::kPerHead;
  o.high_group = 8;
  o.high_count = 2;
  EXPECT_EQ(o.K8(), 4);
  EXPECT_EQ(o.K4(), 12);
  EXPECT_EQ(o.high_columns(), (std::vector<int64_t>{6, 7, 14, 15}));
  EXPECT_EQ(o.packed_column_order(), (std::vector<int32_t>{0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 12, 13, 6, 7, 14, 15}));
  EXPECT_TRUE(o.permuted());
  SiteSpec q;
  q.K = 16;
  q.high_rule = HighRule::kLast;
  q.high_count = 3;
  EXPECT_EQ(q.K8(), 3);
  EXPECT_FALSE(q.permuted());
  EXPECT_EQ(q.high_columns(), (std::vector<int64_t>{13, 14, 15}));
}

TEST(Checkpoint, RoundTripIsBitExact) {
  for (bool bias : {false, true}) {
    test::TempDir tmp;
    const std::string dir = tmp.file("ck");
    const CheckpointMeta m = tiny_meta(tiny_config(bias));
    const Written w = write_checkpoint(dir, m, 11);
    EXPECT_FALSE(fs::exists(dir + ".tmp." + std::to_string(::getpid())));
    const PackedCheckpoint ck = PackedCheckpoint::open(dir);
    // The metadata comes back as given, plus the checksums commit() adds (checked in
    // MalformedCheckpoint.EveryTensorHasItsChecksumInTheMetadata).
    json got = ck.meta().to_json(), given = m.to_json();
    got.erase("checksums");
    given.erase("checksums");
    EXPECT_EQ(got, given);
    for (const auto& [key, wl] : w.linears) {
      const LinearData d = ck.linear(key.first, key.second);
      ASSERT_EQ(d.unpacked_original_order(), wl.q) << site_prefix(key.first, key.second);
      EXPECT_EQ(d.packed.sw4, wl.s_low);
      EXPECT_EQ(d.packed.sw8, wl.s_high);
      EXPECT_EQ(d.bias(), wl.bias);
      EXPECT_EQ(d.packed.ldw4, packed4_row_bytes(d.spec.K4()));  // compact rows, as stored
      EXPECT_EQ(d.packed.ldw8, d.spec.K8());
      // Dequantized values: scale of the column's part times q, in ORIGINAL column order.
      const auto deq = d.dequantized();
      const auto high = d.spec.high_columns();
      std::vector<char> is_high(static_cast<size_t>(d.spec.K), 0);
      for (int64_t k : high) is_high[k] = 1;
      for (int64_t n = 0; n < d.spec.N; ++n)
        for (int64_t k = 0; k < d.spec.K; ++k)
          ASSERT_EQ(deq[n * d.spec.K + k], (is_high[k] ? wl.s_high[n] : wl.s_low[n]) * static_cast<float>(wl.q[n * d.spec.K + k]));
      // Row sums of each part from the written codes: the reader hands them out with the linear.
      for (int64_t n = 0; n < d.spec.N; ++n) {
        int32_t s4 = 0, s8 = 0;
        for (int64_t k = 0; k < d.spec.K; ++k) (is_high[k] ? s8 : s4) += wl.q[n * d.spec.K + k];
        ASSERT_EQ(d.packed.rs4[n], s4) << "row " << n;
        ASSERT_EQ(d.packed.rs8[n], s8) << "row " << n;
      }
    }
    EXPECT_EQ(ck.float_tensor("model.embed_tokens.weight"), w.embed);
  }
}

TEST(Checkpoint, SizesMatchTheBitBudget) {
  test::TempDir tmp;
  const std::string dir = tmp.file("ck");
  const CheckpointMeta m = tiny_meta(tiny_config());
  write_checkpoint(dir, m, 3);
  const CheckpointSizes s = PackedCheckpoint::open(dir).sizes();
  int64_t weights = 0, expect_bytes = 0, scale_bytes = 0;
  for (const auto& [kind, spec] : m.sites) {
    weights += spec.N * spec.K;
    expect_bytes += spec.N * (packed4_row_bytes(spec.K4()) + spec.K8());
    scale_bytes += 2 * 4 * spec.N + (spec.permuted() ? 4 * spec.K : 0);
  }
  const int64_t L = m.model.num_layers;
  EXPECT_EQ(s.quantized_weights, L * weights);
  EXPECT_EQ(s.packed_weight_bytes, L * expect_bytes);
  EXPECT_EQ(s.packed_scale_bytes, L * scale_bytes);
  EXPECT_DOUBLE_EQ(s.bits_per_quantized_weight(), 8.0 * (L * (expect_bytes + scale_bytes)) / (L * weights));
  EXPECT_EQ(s.file_bytes, static_cast<int64_t>(fs::file_size(fs::path(dir) / "model.safetensors")));
}

TEST(Checkpoint, ShardsWithAnIndexAboveTheLimit) {
  test::TempDir tmp;
  const std::string dir = tmp.file("ck");
  const CheckpointMeta m = tiny_meta(tiny_config());
  const Written w = write_checkpoint(dir, m, 5, /*max_shard=*/2048);
  EXPECT_TRUE(fs::exists(fs::path(dir) / "model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(fs::path(dir) / "model.safetensors"));
  const PackedCheckpoint ck = PackedCheckpoint::open(dir);
  EXPECT_GT(ck.store().files().size(), 2u);
  EXPECT_EQ(ck.linear(1, SiteKind::kDown).unpacked_original_order(), w.linears.at({1, SiteKind::kDown}).q);
}

TEST(CheckpointWriter, IsAtomic) {
  test::TempDir tmp;
  const std::string dir = tmp.file("ck");
  {
    CheckpointWriter writer(dir);
    const float x[2] = {1, 2};
    writer.add_f32("a", {2}, x);
    EXPECT_THROW(writer.add_f32("a", {2}, x), UsageError);
    EXPECT_TRUE(fs::exists(writer.temp_dir()));
    // destroyed without commit: nothing left behind
  }
  EXPECT_FALSE(fs::exists(dir));
  EXPECT_TRUE(fs::is_empty(tmp.path()));
  fs::create_directories(dir);
  EXPECT_THROW(CheckpointWriter w2(dir), UsageError);
}

// The writer streams tensors to disk (spill files per element size) and assembles each shard from
// them: every tensor must come back byte for byte, aligned to its element size, the data section
// contiguous from the header to the end of the file, and no spill file may be left behind.
TEST(CheckpointWriter, StreamedShardsAreAlignedContiguousAndComplete) {
  test::TempDir tmp;
  const std::string dir = tmp.file("ck");
  struct T { std::string name; DType dtype; std::vector<int64_t> shape; std::vector<uint8_t> bytes; };
  std::vector<T> added;
  std::mt19937 rng(77);
  const std::vector<std::pair<DType, int64_t>> kinds = {{DType::U8, 3}, {DType::F64, 2}, {DType::BF16, 3}, {DType::F32, 5},
                                                        {DType::I32, 1}, {DType::I8, 7}, {DType::F16, 1}, {DType::U8, 0}};
  {
    CheckpointWriter writer(dir, /*max_shard_bytes=*/96);
    for (int i = 0; i < 24; ++i) {
      const auto& [dtype, n] = kinds[static_cast<size_t>(i) % kinds.size()];
      T t{"t" + std::to_string(i), dtype, {n + i % 3}, {}};
      t.bytes.resize(dtype_size(dtype) * static_cast<size_t>(t.shape[0]));
      for (auto& b : t.bytes) b = static_cast<uint8_t>(rng());
      writer.add(t.name, t.dtype, t.shape, t.bytes.data(), t.bytes.size());
      added.push_back(t);
    }
    writer.commit(tiny_meta(tiny_config()), "{}\n", {});
  }
  std::map<std::string, bool> seen;
  int shards = 0;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string name = entry.path().filename().string();
    EXPECT_EQ(name.find("spill"), std::string::npos) << name;
    if (entry.path().extension() != ".safetensors") continue;
    ++shards;
    auto file = SafetensorsFile::open(entry.path().string());
    std::vector<const TensorView*> views;
    for (const auto& [n, v] : file->tensors()) views.push_back(&v);
    std::sort(views.begin(), views.end(), [](const TensorView* a, const TensorView* b) { return a->data < b->data; });
    uint64_t header_len = 0;
    {
      std::ifstream in(entry.path(), std::ios::binary);
      uint8_t p[8];
      in.read(reinterpret_cast<char*>(p), 8);
      for (int i = 0; i < 8; ++i) header_len |= static_cast<uint64_t>(p[i]) << (8 * i);
    }
    uint64_t data_bytes = 0;
    for (size_t i = 0; i < views.size(); ++i) {
      const TensorView& v = *views[i];
      EXPECT_EQ(reinterpret_cast<uintptr_t>(v.data) % dtype_size(v.dtype), 0u) << v.name << " is misaligned";
      if (i + 1 < views.size()) {
        EXPECT_EQ(v.data + v.nbytes, views[i + 1]->data) << "gap or overlap after " << v.name;
      }
      data_bytes += v.nbytes;
      const auto it = std::find_if(added.begin(), added.end(), [&](const T& t) { return t.name == v.name; });
      ASSERT_NE(it, added.end()) << v.name;
      EXPECT_EQ(v.dtype, it->dtype);
      EXPECT_EQ(v.shape, it->shape);
      EXPECT_EQ(std::vector<uint8_t>(v.data, v.data + v.nbytes), it->bytes) << v.name;
      EXPECT_FALSE(seen[v.name]) << v.name << " in two shards";
      seen[v.name] = true;
    }
    EXPECT_EQ(header_len % 8, 0u);
    EXPECT_EQ(8 + header_len + data_bytes, fs::file_size(entry.path())) << entry.path();
  }
  EXPECT_GT(shards, 2);
  EXPECT_EQ(seen.size(), added.size());
  EXPECT_TRUE(fs::exists(fs::path(dir) / "model.safetensors.index.json"));
}

TEST(CheckpointWriter, RejectsOutOfRangeWeights) {
  test::TempDir tmp;
  const CheckpointMeta m = tiny_meta(tiny_config(), 2, 1, /*wbits_low=*/3);
  CheckpointWriter writer(tmp.file("ck"));
  const SiteSpec& s = m.sites.at(SiteKind::kQ);
  std::vector<int8_t> q(static_cast<size_t>(s.N * s.K), 0);
  std::vector<float> sc(static_cast<size_t>(s.N), 1.0f);
  q[5] = 4;  // 3-bit range is [-4, 3]
  try {
    writer.add_packed_linear(0, s, pack_site(s, q.data(), sc.data(), sc.data(), nullptr, "checkpoint: q_proj"));
    FAIL() << "expected ShapeError";
  } catch (const ShapeError& e) {
    EXPECT_NE(std::string(e.what()).find("q[0, 5] = 4 is outside the 3-bit range"), std::string::npos) << e.what();
  }
}

TEST(CheckpointWriter, CommitNeverReplacesADirectoryCreatedMeanwhile) {
  test::TempDir tmp;
  const std::string dir = tmp.file("ck");
  {
    CheckpointWriter writer(dir);
    const float x[2] = {1, 2};
    writer.add_f32("a", {2}, x);
    fs::create_directory(dir);  // someone else's (empty) directory appears before the rename
    EXPECT_THROW(writer.commit(tiny_meta(tiny_config()), "{}\n", {}), UsageError);
  }
  EXPECT_TRUE(fs::is_empty(dir));
  EXPECT_EQ(std::distance(fs::directory_iterator(tmp.path()), fs::directory_iterator()), 1);  // no temporary left
}

TEST(CheckpointWriter, RemovesTheTemporaryDirectoriesOfDeadRuns) {
  test::TempDir tmp;
  const std::string dir = tmp.file("ck");
  const pid_t pid = ::fork();
  if (pid == 0) ::_exit(0);
  ::waitpid(pid, nullptr, 0);
  const std::string stale = dir + ".tmp." + std::to_string(pid);
  fs::create_directories(stale);
  test::write_file(stale + "/spill-0-1", "left by a killed run");
  {
    CheckpointWriter writer(dir);
    EXPECT_FALSE(fs::exists(stale));
  }
}

TEST(CheckpointWriter, AnInterruptUnwindsAndRemovesTheTemporaryDirectory) {
  test::TempDir tmp;
  const std::string dir = tmp.file("ck");
  reset_interrupt_for_testing();
  {
    CheckpointWriter writer(dir);
    const float x[2] = {1, 2};
    writer.add_f32("a", {2}, x);
    std::raise(SIGINT);  // the handler only sets the flag
    EXPECT_THROW(writer.add_f32("b", {2}, x), InterruptedError);
  }
  reset_interrupt_for_testing();
  EXPECT_TRUE(fs::is_empty(tmp.path()));
}


}  // namespace
}  // namespace resq::format
