// The streaming sharded writer and the staging directory (resq/io/safetensors_writer.h): HF order
// equals write_safetensors byte for byte, the checkpoint order keeps add() order within an element
// size, shards are cut at the limit and named as HF does, and no spill or temporary file survives.
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <string>
#include <vector>

#include "common/test_util.h"
#include "resq/common/error.h"
#include "resq/io/safetensors.h"

namespace resq {
namespace {

namespace fs = std::filesystem;

TEST(ShardedWriter, OneShardInHfOrderEqualsWriteSafetensors) {
  test::TempDir tmp;
  const std::vector<float> f = {1, 2, 3, 4};
  const std::vector<uint8_t> u = {7, 8, 9};
  const std::vector<double> d = {0.5};
  const std::vector<TensorToWrite> tensors = {{"z.f32", DType::F32, {2, 2}, f.data(), 16},
                                              {"a.u8", DType::U8, {3}, u.data(), 3},
                                              {"m.f64", DType::F64, {1}, d.data(), 8}};
  write_safetensors(tmp.file("ref.safetensors"), tensors, {{"format", "pt"}});
  fs::create_directories(tmp.file("dir"));
  ShardedSafetensorsWriter w(tmp.file("dir"), 1 << 20, TensorOrder::kHuggingFace, {{"format", "pt"}});
  for (const auto& t : tensors) w.add(t.name, t.dtype, t.shape, t.data, t.nbytes);
  EXPECT_EQ(w.finish(), std::vector<std::string>{"model.safetensors"});
  EXPECT_EQ(test::read_file(tmp.file("dir/model.safetensors")), test::read_file(tmp.file("ref.safetensors")));
  EXPECT_EQ(test::directory_entries(tmp.file("dir")), std::vector<std::string>{"model.safetensors"});
}

TEST(ShardedWriter, CheckpointOrderKeepsAddOrderWithinAnElementSize) {
  test::TempDir tmp;
  const std::vector<float> f = {1, 2};
  const std::vector<int32_t> i = {3};
  const std::vector<uint8_t> u = {4};
  ShardedSafetensorsWriter w(tmp.path(), 1 << 20, TensorOrder::kElementSizeThenAdded, {});
  w.add("u", DType::U8, {1}, u.data(), 1);
  w.add("z", DType::F32, {2}, f.data(), 8);
  w.add("b", DType::I32, {1}, i.data(), 4);
  w.finish();
  const auto file = SafetensorsFile::open(tmp.file("model.safetensors"));
  // Data order: z (4-byte, added first), b (4-byte), u (1-byte).
  EXPECT_EQ(file->get("z").data + 8, file->get("b").data);
  EXPECT_EQ(file->get("b").data + 4, file->get("u").data);
}

TEST(ShardedWriter, CutsShardsAtTheLimitAndWritesTheIndex) {
  test::TempDir tmp;
  const std::vector<float> f(10, 1.0f);  // 40 bytes each
  ShardedSafetensorsWriter w(tmp.path(), 100, TensorOrder::kHuggingFace, {{"format", "pt"}});
  for (int k = 0; k < 5; ++k) w.add("t" + std::to_string(k), DType::F32, {10}, f.data(), 40);
  const auto files = w.finish();  // 2 + 2 + 1 tensors
  EXPECT_EQ(files, (std::vector<std::string>{"model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                                             "model-00003-of-00003.safetensors"}));
  const TensorStore store = TensorStore::open_model_dir(tmp.path());
  EXPECT_EQ(store.size(), 5u);
  EXPECT_EQ(store.get("t4").file, tmp.file("model-00003-of-00003.safetensors"));
  for (const std::string& name : test::directory_entries(tmp.path())) {
    EXPECT_EQ(name.find("spill"), std::string::npos) << name;
    EXPECT_EQ(name.find(".tmp"), std::string::npos) << name;
  }
}

TEST(ShardedWriter, RejectsBadUse) {
  test::TempDir tmp;
  const float x = 1.0f;
  {
    ShardedSafetensorsWriter w(tmp.path(), 100, TensorOrder::kHuggingFace, {});
    EXPECT_THROW(w.finish(), UsageError);  // nothing added
  }
  ShardedSafetensorsWriter w(tmp.path(), 100, TensorOrder::kHuggingFace, {});
  w.add("x", DType::F32, {1}, &x, 4);
  EXPECT_THROW(w.add("x", DType::F32, {1}, &x, 4), UsageError);   // duplicate
  EXPECT_THROW(w.add("y", DType::F32, {2}, &x, 4), UsageError);   // nbytes != 8
  EXPECT_THROW(w.add("__metadata__", DType::F32, {1}, &x, 4), UsageError);
  w.finish();
  EXPECT_THROW(w.add("z", DType::F32, {1}, &x, 4), UsageError);   // after finish
}

TEST(StagingDirectory, RenamesWhenCommittedAndCleansUpOtherwise) {
  test::TempDir tmp;
  {
    StagingDirectory s(tmp.file("out"));
    test::write_file(s.path() + "/a.txt", "a");
    EXPECT_FALSE(fs::exists(tmp.file("out")));
  }
  EXPECT_FALSE(fs::exists(tmp.file("out")));
  EXPECT_EQ(test::directory_entries(tmp.path()), std::vector<std::string>{});
  StagingDirectory s(tmp.file("out"));
  test::write_file(s.path() + "/a.txt", "a");
  s.commit();
  EXPECT_EQ(test::read_file(tmp.file("out/a.txt")), "a");
  EXPECT_THROW(StagingDirectory again(tmp.file("out")), UsageError);
}

}  // namespace
}  // namespace resq
