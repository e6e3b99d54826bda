#include "common/files.h"

#include <fcntl.h>
#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>

#include "common/error.h"

namespace kdae {
namespace fs = std::filesystem;

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path.string(), ": cannot open for reading: ", std::strerror(errno));
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) fail(path.string(), ": read error");
  return bytes;
}

AtomicFileWriter::AtomicFileWriter(fs::path path) : path_(std::move(path)) {
  tmp_ = path_.string() + ".tmp-" + std::to_string(::getpid());
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) fail(tmp_.string(), ": cannot create: ", std::strerror(errno));
}

AtomicFileWriter::~AtomicFileWriter() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(tmp_.c_str());
  }
}

void AtomicFileWriter::write(const void* data, size_t size) {
  const char* bytes = static_cast<const char*>(data);
  size_t done = 0;
  while (done < size) {
    const ssize_t n = ::write(fd_, bytes + done, size - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = n == 0 ? ENOSPC : errno;
      fail(path_.string(), ": write failed after ", written_ + done, " bytes: ", std::strerror(err));
    }
    done += static_cast<size_t>(n);
  }
  written_ += size;
}

void AtomicFileWriter::commit() {
  if (::fsync(fd_) != 0) fail(path_.string(), ": cannot flush: ", std::strerror(errno));
  const int rc = ::close(fd_);
  fd_ = -1;
  if (rc != 0) {
    ::unlink(tmp_.c_str());
    fail(path_.string(), ": cannot close: ", std::strerror(errno));
  }
  std::error_code ec;
  fs::rename(tmp_, path_, ec);
  if (ec) {
    ::unlink(tmp_.c_str());
    fail(path_.string(), ": cannot rename into place: ", ec.message());
  }
}

void write_file_atomic(const fs::path& path, std::string_view bytes) {
  AtomicFileWriter writer(path);
  writer.write(bytes.data(), bytes.size());
  writer.commit();
}

void remove_tree(const fs::path& path) {
  auto remove_one = [](const char* p, const struct stat*, int, struct FTW*) { return std::remove(p) == 0 ? 0 : -1; };
  std::error_code ec;
  if (!fs::exists(fs::symlink_status(path, ec))) return;
  if (::nftw(path.c_str(), remove_one, 16, FTW_DEPTH | FTW_PHYS) != 0)
    fail(path.string(), ": cannot delete: ", std::strerror(errno));
}

fs::path staging_path_for(const fs::path& target) {
  fs::path clean = target;
  if (!clean.has_filename()) clean = clean.parent_path();
  return clean.parent_path() / ("." + clean.filename().string() + ".partial-" + std::to_string(::getpid()));
}

void publish_directory(const fs::path& tmp_dir, const fs::path& target, bool overwrite) {
  std::error_code ec;
  if (fs::exists(target)) {
    if (!overwrite) fail(target.string(), ": already exists (pass --overwrite to replace it)");
    const fs::path old = target.string() + ".old-" + std::to_string(::getpid());
    fs::rename(target, old, ec);
    if (ec) fail(target.string(), ": cannot move the old output aside: ", ec.message());
    fs::rename(tmp_dir, target, ec);
    if (ec) {
      fs::rename(old, target);
      fail(target.string(), ": cannot rename new output into place: ", ec.message());
    }
    remove_tree(old);
    return;
  }
  fs::rename(tmp_dir, target, ec);
  if (ec) fail(target.string(), ": cannot rename new output into place: ", ec.message());
}

}  // namespace kdae
