#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <cerrno>
#include <cstring>

#include "common/error.h"
#include "common/files.h"

namespace kdae::io {
namespace fs = std::filesystem;

class MappedFile {
 public:
  explicit MappedFile(const fs::path& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) fail(path.string(), ": cannot open: ", std::strerror(errno));
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      ::close(fd);
      fail(path.string(), ": cannot stat: ", std::strerror(errno));
    }
    size_ = static_cast<uint64_t>(st.st_size);
    if (size_ > 0) {
      data_ = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (data_ == MAP_FAILED) {
        ::close(fd);
        fail(path.string(), ": cannot mmap: ", std::strerror(errno));
      }
    }
    ::close(fd);
  }
  ~MappedFile() {
    if (data_ && data_ != MAP_FAILED) ::munmap(data_, size_);
  }
  const uint8_t* bytes() const { return static_cast<const uint8_t*>(data_); }
  uint64_t size() const { return size_; }

 private:
  void* data_ = nullptr;
  uint64_t size_ = 0;
};

namespace {

const uint8_t kEmpty[8] = {0};

torch::ScalarType scalar_type(const std::string& dtype, const std::string& where) {
  static const std::pair<const char*, torch::ScalarType> types[] = {
      {"F64", torch::kFloat64}, {"F32", torch::kFloat32}, {"F16", torch::kFloat16}, {"BF16", torch::kBFloat16},
      {"I64", torch::kInt64},   {"I32", torch::kInt32},   {"I16", torch::kInt16},   {"I8", torch::kInt8},
      {"U8", torch::kUInt8},    {"BOOL", torch::kBool},   {"U16", torch::kUInt16},  {"U32", torch::kUInt32},
      {"U64", torch::kUInt64},  {"F8_E4M3", torch::kFloat8_e4m3fn}, {"F8_E5M2", torch::kFloat8_e5m2},
  };
  for (const auto& [name, type] : types)
    if (dtype == name) return type;
  fail(where, ": dtype '", dtype, "' is not supported");
}

std::string dtype_string(torch::ScalarType type, const std::string& name) {
  switch (type) {
    case torch::kFloat64: return "F64";
    case torch::kFloat32: return "F32";
    case torch::kFloat16: return "F16";
    case torch::kBFloat16: return "BF16";
    case torch::kInt64: return "I64";
    case torch::kInt32: return "I32";
    case torch::kInt16: return "I16";
    case torch::kInt8: return "I8";
    case torch::kUInt8: return "U8";
    case torch::kBool: return "BOOL";
    default: fail("tensor '", name, "': dtype ", c10::toString(type), " cannot be written to safetensors");
  }
}

}  // namespace

SafetensorsFile::SafetensorsFile(const fs::path& path) : path_(path) {
  file_ = std::make_shared<MappedFile>(path);
  header_ = parse_safetensors_header(file_->size() ? file_->bytes() : kEmpty, file_->size(), path.string());
  for (size_t i = 0; i < header_.tensors.size(); ++i) index_[header_.tensors[i].name] = i;
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> out;
  for (const auto& t : header_.tensors) out.push_back(t.name);
  return out;
}

bool SafetensorsFile::has(const std::string& name) const { return index_.count(name) > 0; }

torch::Tensor SafetensorsFile::get(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) fail(path_.string(), ": no tensor named '", name, "'");
  const TensorEntry& entry = header_.tensors[it->second];
  const auto type = scalar_type(entry.dtype, path_.string() + ": tensor '" + name + "'");
  auto keep_alive = file_;
  void* data = const_cast<uint8_t*>(file_->bytes() + header_.data_offset + entry.begin);
  if (entry.end == entry.begin) return torch::empty(entry.shape, torch::TensorOptions().dtype(type));
  // Read-only aliasing of the mapping: callers copy (to(), clone()) before writing.
  return torch::from_blob(data, entry.shape, [keep_alive](void*) {}, torch::TensorOptions().dtype(type));
}

CheckpointReader::CheckpointReader(const fs::path& model_dir) : dir_(model_dir) {
  const fs::path index_path = model_dir / "model.safetensors.index.json";
  const fs::path single = model_dir / "model.safetensors";
  std::vector<fs::path> shards;
  if (fs::exists(index_path)) {
    nlohmann::json index;
    try {
      index = nlohmann::json::parse(read_file(index_path));
    } catch (const nlohmann::json::exception& e) {
      fail(index_path.string(), ": not valid JSON: ", e.what());
    }
    if (!index.contains("weight_map") || !index["weight_map"].is_object())
      fail(index_path.string(), ": missing \"weight_map\" object");
    std::map<std::string, size_t> shard_ids;
    for (auto it = index["weight_map"].begin(); it != index["weight_map"].end(); ++it) {
      if (!it->is_string()) fail(index_path.string(), ": weight_map entry '", it.key(), "' is not a file name");
      const std::string file = it->get<std::string>();
      if (file.find('/') != std::string::npos) fail(index_path.string(), ": shard name '", file, "' must be a plain file name");
      if (!shard_ids.count(file)) {
        shard_ids[file] = files_.size();
        files_.push_back(std::make_unique<SafetensorsFile>(model_dir / file));
      }
      where_[it.key()] = shard_ids[file];
      if (!files_[shard_ids[file]]->has(it.key()))
        fail(index_path.string(), ": lists '", it.key(), "' in ", file, " but that shard does not hold it");
    }
  } else if (fs::exists(single)) {
    files_.push_back(std::make_unique<SafetensorsFile>(single));
    for (const auto& name : files_[0]->names()) where_[name] = 0;
  } else {
    fail(model_dir.string(), ": no model.safetensors or model.safetensors.index.json");
  }
}

std::vector<std::string> CheckpointReader::names() const {
  std::vector<std::string> out;
  for (const auto& [name, _] : where_) out.push_back(name);
  return out;
}

bool CheckpointReader::has(const std::string& name) const { return where_.count(name) > 0; }

torch::Tensor CheckpointReader::get(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) fail(dir_.string(), ": checkpoint has no tensor '", name, "'");
  return files_[it->second]->get(name);
}

std::vector<int64_t> CheckpointReader::shape(const std::string& name) const {
  auto it = where_.find(name);
  if (it == where_.end()) fail(dir_.string(), ": checkpoint has no tensor '", name, "'");
  for (const auto& t : files_[it->second]->header().tensors)
    if (t.name == name) return t.shape;
  fail(dir_.string(), ": tensor '", name, "' vanished from its shard");
}

void write_safetensors(const fs::path& path, const NamedTensors& tensors, const std::map<std::string, std::string>& metadata) {
  std::vector<TensorEntry> entries;
  for (const auto& [name, tensor] : tensors) {
    TensorEntry e;
    e.name = name;
    e.dtype = dtype_string(tensor.scalar_type(), name);
    e.shape = tensor.sizes().vec();
    entries.push_back(std::move(e));
  }
  const std::string header = make_safetensors_header(entries, metadata);
  AtomicFileWriter out(path);
  out.write(header.data(), header.size());
  for (const auto& [name, tensor] : tensors) {
    // One tensor at a time on the host keeps peak memory near the largest tensor.
    const torch::Tensor host = tensor.detach().to(torch::kCPU).contiguous();
    out.write(host.data_ptr(), host.nbytes());
  }
  out.commit();
}

void write_checkpoint(const fs::path& dir, const NamedTensors& tensors, uint64_t max_shard_bytes,
                      const std::map<std::string, std::string>& metadata) {
  std::vector<NamedTensors> shards(1);
  uint64_t current = 0, total = 0;
  for (const auto& named : tensors) {
    const uint64_t size = named.second.nbytes();
    if (current > 0 && current + size > max_shard_bytes) {
      shards.emplace_back();
      current = 0;
    }
    shards.back().push_back(named);
    current += size;
    total += size;
  }
  if (shards.size() == 1) {
    write_safetensors(dir / "model.safetensors", shards[0], metadata);
    return;
  }
  nlohmann::ordered_json index;
  index["metadata"] = {{"total_size", total}};
  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  char name[64];
  for (size_t i = 0; i < shards.size(); ++i) {
    std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", i + 1, shards.size());
    write_safetensors(dir / name, shards[i], metadata);
    for (const auto& [tensor_name, _] : shards[i]) weight_map[tensor_name] = name;
  }
  index["weight_map"] = weight_map;
  write_file_atomic(dir / "model.safetensors.index.json", index.dump(2) + "\n");
}

}  // namespace kdae::io
