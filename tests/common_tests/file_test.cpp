// Tests of the whole-file reader (resq/common/file.h): contents verbatim, and IoErrors that name
// the path and the system's reason for a missing file, a directory and an unreadable file.
#include "resq/common/file.h"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <filesystem>
#include <string>

#include "common/test_util.h"
#include "resq/common/error.h"

namespace resq {
namespace {

class FileTest : public testing::Test {
 protected:
  std::string write(const std::string& name, const std::string& bytes) {
    const std::string path = dir_.file(name);
    test::write_file(path, bytes);
    return path;
  }
  std::string io_error(const std::string& path, const std::string& what = "file") {
    return test::message_of<IoError>([&] { read_file(path, what); });
  }
  test::TempDir dir_;
};

TEST_F(FileTest, ReadsBytesVerbatim) {
  std::string bytes = "line one\r\nline two\n";
  bytes += std::string("\0\xFF\x80 binary", 10);
  EXPECT_EQ(read_file(write("a.bin", bytes)), bytes);
}

TEST_F(FileTest, ReadsFilesLargerThanOneChunk) {
  std::string bytes(300000, '\0');
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>(i * 7 + i / 1000);
  EXPECT_EQ(read_file(write("big.bin", bytes)), bytes);
}

TEST_F(FileTest, EmptyFileIsEmptyString) { EXPECT_EQ(read_file(write("empty.txt", "")), ""); }

TEST_F(FileTest, ReadsFilesWhoseSizeIsNotKnownInAdvance) {
  // /proc files report size 0; the reader must not trust st_size.
  EXPECT_NE(read_file("/proc/self/status").find("Name:"), std::string::npos);
}

TEST_F(FileTest, MissingFileNamesPathWhatAndReason) {
  const std::string path = dir_.file("missing.json");
  EXPECT_EQ(io_error(path, "recipe file"), path + ": cannot open recipe file: " + errno_text(ENOENT));
  EXPECT_EQ(io_error(path), path + ": cannot open file: No such file or directory");
}

TEST_F(FileTest, DirectoryIsRefused) {
  EXPECT_EQ(io_error(dir_.path(), "model config"),
            dir_.path() + ": cannot read model config: " + errno_text(EISDIR));
}

TEST_F(FileTest, UnreadableFileNamesTheReason) {
  const std::string path = write("secret.txt", "x");
  std::filesystem::permissions(path, std::filesystem::perms::none);
  if (::access(path.c_str(), R_OK) == 0) GTEST_SKIP() << "running as root: permissions are not enforced";
  EXPECT_EQ(io_error(path), path + ": cannot open file: " + errno_text(EACCES));
}

TEST_F(FileTest, DevicesAndFifosAreRefusedWithoutBlocking) {
  // /dev/zero never ends and a FIFO without a writer would block at open: both are refused at once.
  EXPECT_EQ(io_error("/dev/zero", "--data text file"),
            "/dev/zero: cannot read --data text file: not a regular file (a character device)");
  const std::string fifo = dir_.file("fifo");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  EXPECT_EQ(io_error(fifo, "--data text file"), fifo + ": cannot read --data text file: not a regular file (a FIFO)");
}

TEST_F(FileTest, FilesOverTheBoundAreRefused) {
  const std::string path = write("ten.txt", "0123456789");
  EXPECT_EQ(read_file(path, "text", 10), "0123456789");
  EXPECT_EQ(test::message_of<IoError>([&] { read_file(path, "--data text file", 9); }),
            path + ": cannot read --data text file: 10 bytes or more, over the limit of 9 bytes");
}

TEST(ErrnoText, IsTheSystemsText) {
  EXPECT_EQ(errno_text(ENOENT), "No such file or directory");
  EXPECT_FALSE(errno_text(EISDIR).empty());
}

}  // namespace
}  // namespace resq
