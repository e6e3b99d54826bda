// File helpers that never leave a half-written output behind.
#pragma once
#include <filesystem>
#include <string>
#include <string_view>

namespace kdae {

std::string read_file(const std::filesystem::path& path);

// Writes to "<path>.tmp-<pid>", fsyncs, then renames over path: readers see the old or the new
// file, never a torn one. Throws (naming the path) on a full disk or any short write.
void write_file_atomic(const std::filesystem::path& path, std::string_view bytes);

// Streaming form of write_file_atomic for outputs too large to hold twice in memory:
// write() pieces, then commit(); destroying an uncommitted writer removes the temp file.
class AtomicFileWriter {
 public:
  explicit AtomicFileWriter(std::filesystem::path path);
  ~AtomicFileWriter();
  AtomicFileWriter(const AtomicFileWriter&) = delete;
  AtomicFileWriter& operator=(const AtomicFileWriter&) = delete;
  void write(const void* data, size_t size);
  void commit();

 private:
  std::filesystem::path path_, tmp_;
  int fd_ = -1;
  size_t written_ = 0;
};

// Deletes a file or directory tree; a missing path is fine. Use this, never std::filesystem::remove_all:
// libtorch.so exports its own copy of the std::filesystem functions and its remove_all segfaults
// (torch 2.11 wheel) in every binary that links LibTorch.
void remove_tree(const std::filesystem::path& path);

// Renames a fully written temporary directory into place; an existing target is an error
// unless overwrite is set, in which case the old directory is removed only after the rename succeeds.
void publish_directory(const std::filesystem::path& tmp_dir, const std::filesystem::path& target, bool overwrite);

// A sibling of target that publish_directory can later rename into place.
std::filesystem::path staging_path_for(const std::filesystem::path& target);

}  // namespace kdae
