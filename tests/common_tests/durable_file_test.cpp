// Tests of the durable-write primitives of resq/common/file.h: atomic replacement, the no-replace
// rename (never over an existing file or directory, empty or not), removal of temporaries left by
// dead processes only, and the output probes that run before any work.
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <string>

#include "common/test_util.h"
#include "resq/common/error.h"
#include "resq/common/file.h"

namespace resq {
namespace {

namespace fs = std::filesystem;

// A pid that belonged to a process which has exited (and been reaped).
pid_t dead_pid() {
  const pid_t pid = ::fork();
  if (pid == 0) ::_exit(0);
  int status = 0;
  ::waitpid(pid, &status, 0);
  return pid;
}

TEST(WriteFileAtomically, ReplacesTheFileAndLeavesNoTemporary) {
  test::TempDir dir;
  const std::string path = dir.file("out.json");
  write_file_atomically(path, std::string("first"), "test file");
  write_file_atomically(path, std::string("second"), "test file");
  EXPECT_EQ(read_file(path), "second");
  EXPECT_FALSE(fs::exists(temporary_path(path)));
}

TEST(WriteFileAtomically, AFailedWriteKeepsTheOldFileAndRemovesTheTemporary) {
  test::TempDir dir;
  const std::string path = dir.file("out.json");
  write_file_atomically(path, std::string("old"), "test file");
  EXPECT_THROW(write_file_atomically(
                   path, [](int, const std::string& tmp) { throw IoError(tmp + ": disk full"); }, "test file"),
               IoError);
  EXPECT_EQ(read_file(path), "old");
  EXPECT_FALSE(fs::exists(temporary_path(path)));
}

TEST(WriteFileAtomically, UnwritableDirectoryNamesThePath) {
  const std::string msg =
      test::message_of<IoError>([] { write_file_atomically("/nonexistent-dir/x.json", std::string("x"), "JSON report"); });
  EXPECT_NE(msg.find("/nonexistent-dir/x.json"), std::string::npos) << msg;
  EXPECT_NE(msg.find("No such file or directory"), std::string::npos) << msg;
}

TEST(RenameNoReplace, MovesWhenTheTargetIsAbsent) {
  test::TempDir dir;
  fs::create_directory(dir.file("a"));
  test::write_file(dir.file("a/f"), "x");
  EXPECT_TRUE(rename_no_replace(dir.file("a"), dir.file("b")));
  EXPECT_EQ(read_file(dir.file("b/f")), "x");
  EXPECT_FALSE(fs::exists(dir.file("a")));
}

TEST(RenameNoReplace, NeverReplacesAnEmptyDirectoryOrAFile) {
  // rename(2) would silently replace an empty directory and any file: the no-replace rename must not.
  test::TempDir dir;
  fs::create_directory(dir.file("a"));
  test::write_file(dir.file("a/f"), "x");
  fs::create_directory(dir.file("empty"));
  EXPECT_FALSE(rename_no_replace(dir.file("a"), dir.file("empty")));
  EXPECT_TRUE(fs::is_empty(dir.file("empty")));
  EXPECT_TRUE(fs::exists(dir.file("a/f")));
  test::write_file(dir.file("src"), "new");
  test::write_file(dir.file("dst"), "old");
  EXPECT_FALSE(rename_no_replace(dir.file("src"), dir.file("dst")));
  EXPECT_EQ(read_file(dir.file("dst")), "old");
}

TEST(RenameNoReplace, OtherFailuresAreIoErrorsNamingThePaths) {
  test::TempDir dir;
  const std::string msg = test::message_of<IoError>([&] { rename_no_replace(dir.file("missing"), dir.file("to")); });
  EXPECT_NE(msg.find(dir.file("missing")), std::string::npos) << msg;
}

TEST(RemoveStaleTemporaries, RemovesOnlyThoseOfDeadProcesses) {
  test::TempDir dir;
  const std::string base = dir.file("ck");
  const std::string dead = base + ".tmp." + std::to_string(dead_pid());
  const std::string alive = base + ".tmp." + std::to_string(::getppid());  // our parent is running
  const std::string other = base + ".tmp.notapid";
  const std::string unrelated = dir.file("ck2.tmp.1");
  for (const std::string& d : {dead, alive, other}) fs::create_directories(d + "/sub");
  test::write_file(unrelated, "x");
  const auto removed = remove_stale_temporaries(base + "/");
  ASSERT_EQ(removed.size(), 1u);
  EXPECT_EQ(removed[0], dead);
  EXPECT_FALSE(fs::exists(dead));
  EXPECT_TRUE(fs::exists(alive));
  EXPECT_TRUE(fs::exists(other));
  EXPECT_TRUE(fs::exists(unrelated));
}

TEST(CheckOutput, FileProbeAcceptsNewAndExistingFiles) {
  test::TempDir dir;
  EXPECT_NO_THROW(check_output_file_writable(dir.file("new.json"), "--json"));
  EXPECT_FALSE(fs::exists(dir.file("new.json")));
  EXPECT_FALSE(fs::exists(temporary_path(dir.file("new.json"))));
  test::write_file(dir.file("old.json"), "x");
  EXPECT_NO_THROW(check_output_file_writable(dir.file("old.json"), "--json"));
  EXPECT_EQ(read_file(dir.file("old.json")), "x");
}

TEST(CheckOutput, FileProbeRefusesDirectoriesAndMissingParents) {
  test::TempDir dir;
  EXPECT_EQ(test::message_of<UsageError>([&] { check_output_file_writable(dir.path(), "--json"); }),
            "--json: cannot write '" + dir.path() + "': it is a directory, expected a file name");
  EXPECT_EQ(test::message_of<UsageError>([&] { check_output_file_writable(dir.file("no/x.json"), "--json"); }),
            "--json: cannot write '" + dir.file("no/x.json") + "': No such file or directory");
  EXPECT_THROW(check_output_file_writable("/dev/null/x.json", "--json"), UsageError);
}

TEST(CheckOutput, DirectoryProbe) {
  test::TempDir dir;
  EXPECT_NO_THROW(check_output_dir_creatable(dir.file("out"), "--out"));
  EXPECT_FALSE(fs::exists(dir.file("out")));
  EXPECT_EQ(test::message_of<UsageError>([&] { check_output_dir_creatable(dir.path(), "--out"); }),
            "--out: '" + dir.path() + "' already exists; choose a new directory");
  EXPECT_NO_THROW(check_output_dir_creatable(dir.file("new/parents/out"), "--out"));  // the writer creates parents
  EXPECT_FALSE(fs::exists(dir.file("new")));
  test::write_file(dir.file("file"), "x");
  EXPECT_EQ(test::message_of<UsageError>([&] { check_output_dir_creatable(dir.file("file/out"), "--out"); }),
            "--out: cannot create '" + dir.file("file/out") + "': " + dir.file("file") + " is not a directory");
}

}  // namespace
}  // namespace resq
