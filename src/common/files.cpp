#include "common/files.h"

#include <fcntl.h>
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

void write_file_atomic(const fs::path& path, std::string_view bytes) {
  const fs::path tmp = path.string() + ".tmp-" + std::to_string(::getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail(tmp.string(), ": cannot create: ", std::strerror(errno));
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int err = errno;
      ::close(fd);
      ::unlink(tmp.c_str());
      fail(path.string(), ": write failed after ", done, " of ", bytes.size(), " bytes: ", std::strerror(err));
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    const int err = errno;
    ::unlink(tmp.c_str());
    fail(path.string(), ": cannot flush: ", std::strerror(err));
  }
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) {
    ::unlink(tmp.c_str());
    fail(path.string(), ": cannot rename into place: ", ec.message());
  }
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
    fs::remove_all(old, ec);
    return;
  }
  fs::rename(tmp_dir, target, ec);
  if (ec) fail(target.string(), ": cannot rename new output into place: ", ec.message());
}

}  // namespace kdae
