// Whole-file reading (stdio plus fstat) and atomic writing (temporary file, fsync, rename), every
// failure with its errno text in the message.
#include "resq/common/file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>

#include "resq/common/error.h"

namespace resq {
namespace {

// strerror_r is the XSI one (int) or the GNU one (char*) depending on the C library's feature
// macros; these overloads accept either.
[[maybe_unused]] const char* strerror_result(int rc, const char* buffer) {
  return rc == 0 ? buffer : "unknown error";
}
[[maybe_unused]] const char* strerror_result(const char* text, const char*) { return text; }

struct FileCloser {
  void operator()(std::FILE* file) const { std::fclose(file); }
};

}  // namespace

std::string errno_text(int errnum) {
  char buffer[256] = {0};
  return strerror_result(::strerror_r(errnum, buffer, sizeof(buffer)), buffer);
}

std::string read_file(const std::string& path, const std::string& what) {
  const std::unique_ptr<std::FILE, FileCloser> file(std::fopen(path.c_str(), "rb"));
  if (!file) throw IoError(path + ": cannot open " + what + ": " + errno_text(errno));
  struct stat st {};
  if (::fstat(::fileno(file.get()), &st) != 0) {
    throw IoError(path + ": cannot stat " + what + ": " + errno_text(errno));
  }
  // fopen succeeds on a directory; say so instead of failing later with a bare read error.
  if (S_ISDIR(st.st_mode)) throw IoError(path + ": cannot read " + what + ": " + errno_text(EISDIR));
  std::string bytes;
  // st_size is a hint only: files under /proc report 0, and a file may grow while it is read.
  if (S_ISREG(st.st_mode) && st.st_size > 0) bytes.reserve(static_cast<size_t>(st.st_size));
  char chunk[1 << 16];
  size_t n = 0;
  while ((n = std::fread(chunk, 1, sizeof(chunk), file.get())) > 0) bytes.append(chunk, n);
  if (std::ferror(file.get())) throw IoError(path + ": cannot read " + what + ": " + errno_text(errno));
  return bytes;
}

void write_file_atomically(const std::string& path, const std::string& bytes, const std::string& what) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) throw IoError(path + ": cannot write " + what + " (" + tmp + "): " + errno_text(errno));
  auto fail = [&](const std::string& step) {
    const std::string reason = errno_text(errno);
    ::close(fd);
    ::unlink(tmp.c_str());
    throw IoError(path + ": cannot write " + what + ": " + step + " failed: " + reason);
  };
  for (size_t done = 0; done < bytes.size();) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail("write");
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) fail("fsync");
  if (::close(fd) != 0) {
    const std::string reason = errno_text(errno);
    ::unlink(tmp.c_str());
    throw IoError(path + ": cannot write " + what + ": close failed: " + reason);
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string reason = errno_text(errno);
    ::unlink(tmp.c_str());
    throw IoError(path + ": cannot rename " + tmp + " into place: " + reason);
  }
}

}  // namespace resq
