// Whole-file reading for every loader in resq (one place that turns a path into bytes or an IoError)
// and whole-file atomic writing for small outputs.
#pragma once

#include <string>

namespace resq {

// Reads the file at `path` into a string, bytes verbatim (an empty file gives ""). `what` says what
// the file is for the message. Throws IoError naming the path and the system's reason, e.g.
//   "configs/x.json: cannot open recipe file: No such file or directory"
//   "model/: cannot read model config: Is a directory"
std::string read_file(const std::string& path, const std::string& what = "file");

// Writes `bytes` to `path + ".tmp.<pid>"`, fsyncs and renames it to `path`, so `path` is either
// the old file or the complete new one (reports, HTML). Throws IoError naming the path and the
// system's reason; the temporary file is removed on failure.
void write_file_atomically(const std::string& path, const std::string& bytes, const std::string& what = "file");

// The system's text for an errno value ("No such file or directory").
std::string errno_text(int errnum);

}  // namespace resq
