// Every recipe in configs/ through recipe_layout_params + format::model_layout on stories260K's own
// config.json: the 8-bit columns, o_proj's per-head permutation, r_h and storage each recipe implies,
// against hand-computed expectations (d 64 -> last 8 columns; head_dim 8 -> last channel per head).
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "common/test_util.h"
#include "resq/format/layout.h"
#include "resq/quant/pipeline.h"
#include "resq/quant/recipe.h"

namespace resq {
namespace {

using format::LinearStorage;
using format::SiteKind;

format::ModelLayout layout_of(const std::string& recipe) {
  const ModelConfig c = load_model_config(test::shared_path("models/stories260K/config.json"));
  return format::model_layout(c, recipe_layout_params(load_recipe(std::string(RESQ_SOURCE_DIR) + "/configs/" + recipe + ".json")));
}

TEST(RecipeLayout, ResqRecipesKeepTheLastEighthHigh) {
  for (const std::string name : {"resq", "resq-rtn", "resq-w4a16"}) {
    SCOPED_TRACE(name);
    const format::ModelLayout L = layout_of(name);
    EXPECT_EQ(L.r, 8);
    EXPECT_EQ(L.r_h, 1);
    const auto& q = L.sites.at(SiteKind::kQ);
    EXPECT_EQ(q.high_columns(), (std::vector<int64_t>{56, 57, 58, 59, 60, 61, 62, 63}));
    EXPECT_EQ(q.storage, LinearStorage::kPacked);
    const auto& o = L.sites.at(SiteKind::kO);
    EXPECT_EQ(o.high_columns(), (std::vector<int64_t>{7, 15, 23, 31, 39, 47, 55, 63}));
    EXPECT_EQ(o.packed_column_order()[56], 7);
    EXPECT_EQ(o.packed_column_order()[7], 8);
    EXPECT_EQ(L.sites.at(SiteKind::kDown).K8(), 0);
    EXPECT_EQ(q.activations.enabled, name != "resq-w4a16");
  }
}

TEST(RecipeLayout, BaselinesHaveNoHighSubspace) {
  for (const std::string name : {"quarot", "rtn-w4a4kv4", "fp"}) {
    SCOPED_TRACE(name);
    const format::ModelLayout L = layout_of(name);
    EXPECT_EQ(L.r, 0);
    EXPECT_EQ(L.r_h, 0);
    for (const auto& [kind, s] : L.sites) {
      EXPECT_EQ(s.K8(), 0);
      EXPECT_FALSE(s.permuted());
      EXPECT_EQ(s.storage, name == "fp" ? LinearStorage::kDense : LinearStorage::kPacked);
    }
  }
}

}  // namespace
}  // namespace resq
