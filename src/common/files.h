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

// Renames a fully written temporary directory into place; an existing target is an error
// unless overwrite is set, in which case the old directory is removed only after the rename succeeds.
void publish_directory(const std::filesystem::path& tmp_dir, const std::filesystem::path& target, bool overwrite);

// A sibling of target that publish_directory can later rename into place.
std::filesystem::path staging_path_for(const std::filesystem::path& target);

}  // namespace kdae
