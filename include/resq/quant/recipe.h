// Quantization recipes: JSON files in configs/ parsed into a validated struct (unknown keys and bad
// values are errors naming the file and the key). Torch-free.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace resq {

// Learned rotations inside the ResQ subspaces (rotation.learn; docs/QUANTIZE.md "Learned
// rotations"): Cayley SGD on an end-to-end loss of the fake-quantized model on calibration windows.
struct LearnRecipe {
  bool enabled = false;   // true when the recipe has a rotation.learn object
  int64_t steps = 30;     // optimizer steps (>= 1)
  double lr = 0.001;      // Cayley SGD learning rate (> 0); the step is also bounded by 1 / ||momentum||
  double momentum = 0.0;  // [0, 1)
  int64_t batch = 8;      // calibration windows per step (>= 1; capped at the training windows)
  int64_t seed = 0;       // mixed with --seed into the window-sampling stream (>= 0)
  // "ce": next-token cross-entropy of the quantized model; "kl": KL(fp model || quantized model) of
  // the next-token distributions (distillation: targets the quantization gap only); "noise": the
  // Fisher-weighted expected rounding noise of every activation and KV-cache site, a smooth
  // second-order estimate of that KL recorded once from the fp model (src/quant/rotation_noise.h).
  std::string objective = "ce";
  // Fraction of the calibration windows (the last ones) held out of the steps: the held-out loss is
  // measured before learning and every eval_every steps, and the rotations of the best held-out
  // measurement are kept (early stopping; never worse than the start on held-out text). [0, 1); 0 = off.
  double holdout = 0.0;
  int64_t eval_every = 10;  // steps between held-out measurements (>= 1)
  // Weights inside the learning loop: "rtn" (RTN-quantized with the recipe's bits and clip; for
  // objective "noise" also the expected RTN noise of the q/k/gate/up weights joins the objective) or
  // "none" (floating point: only activations and KV cache fake-quantized, as SpinQuant learns before GPTQ).
  std::string weights_in_loop = "rtn";
  // Objective "noise": at most this many calibration tokens (of the first training windows) are
  // recorded (>= 1; also capped so that the record stays under 1 GiB).
  int64_t tokens = 32768;
};

struct RotationRecipe {
  // "resq": PCA bases + random rotations inside the low/high subspaces (the paper);
  // "quarot": every basis the identity and every rotation a full randomized Hadamard;
  // "none": no rotation at all.
  std::string method = "resq";
  double high_fraction = 0.125;    // r = round(high_fraction * dim): 8-bit subspace size
  bool center_embeddings = false;  // QuaRot/official ResQ embedding mean subtraction (changes the function)
  bool online_down_hadamard = true;  // U_D before down_proj
  bool qk_rotation = true;           // U_C on q/k after RoPE
  double pca_damping = 0.01;         // fraction of mean(diag) added before the eigendecomposition
  LearnRecipe learn;                 // "resq" only
};

struct WeightRecipe {
  std::string method = "gptq";  // "gptq" | "rtn" | "none"
  int bits_low = 4;
  int bits_high = 8;     // for the r high-variance input columns (q/k/v, gate/up, o_proj per head)
  bool down_high = false;  // down_proj: all bits_low (paper) unless true
  double percdamp = 0.01;  // GPTQ dampening, fraction of mean(diag(H))
  int64_t blocksize = 128; // GPTQ lazy-batch block
  bool mse_clip = false;   // grid-search a per-channel clip ratio minimizing the MSE
  double clip_ratio = 1.0; // fixed clip ratio when mse_clip is false
};

struct ActivationRecipe {
  bool enabled = true;
  int bits_low = 4;
  int bits_high = 8;
  double clip_ratio = 1.0;      // QuaRot-style clipping of the per-token range (0 < c <= 1)
  bool down_high = false;       // down_proj input: all bits_low (paper) unless true
};

struct KvRecipe {
  bool enabled = true;
  int bits_low = 4;
  int bits_high = 8;  // the last r_h channels of each head
  double k_clip_ratio = 1.0;
  double v_clip_ratio = 1.0;
};

struct Recipe {
  std::string name;
  std::string description;
  RotationRecipe rotation;
  WeightRecipe weights;
  ActivationRecipe activations;
  KvRecipe kv;
  // Effective bits per element of a mixed site with r/dim high channels (e.g. 4.5 for 4/8 at 1/8).
  double mixed_bits(int low, int high) const {
    return low * (1.0 - rotation.high_fraction) + high * rotation.high_fraction;
  }
};

// Effective bits per element of weights, activations and KV cache (16 = not quantized), as the
// quantize report and `--list-recipes` print them.
struct RecipeBits {
  double weights = 16.0;
  double activations = 16.0;
  double kv = 16.0;
};
RecipeBits recipe_bits(const Recipe& recipe);

// Parses and validates; `source` names the file in messages. Throws ConfigError.
Recipe parse_recipe(const nlohmann::json& json, const std::string& source);
Recipe load_recipe(const std::string& path);
nlohmann::json recipe_to_json(const Recipe& recipe);

// The recipes of configs/ compiled into the binary (cmake/EmbedRecipes.cmake), sorted by name.
struct BuiltinRecipeText {
  const char* name;  // file name without .json, e.g. "resq"
  const char* json;  // the file's text
};
const std::vector<BuiltinRecipeText>& builtin_recipe_texts();
// Every built-in recipe parsed (source "<built-in>/NAME.json").
std::vector<Recipe> builtin_recipes();

// --config: a path to a recipe file when one exists there (it wins), else the name of a built-in
// recipe ("resq" or "resq.json"). ConfigError naming the argument and listing the built-in names
// otherwise. *source (if given) receives the file path or "<built-in>/NAME.json".
Recipe find_recipe(const std::string& name_or_path, std::string* source = nullptr);

}  // namespace resq
