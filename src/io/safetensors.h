// safetensors files as tensors: zero-copy reads over mmap, sharded checkpoints through
// model.safetensors.index.json, and atomic (sharded) writes.
#pragma once
#include <torch/types.h>

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "io/safetensors-format.h"

namespace kdae::io {

class MappedFile;

// One .safetensors file, memory-mapped. Tensors returned by get() alias the mapping (read-only
// CPU tensors); they keep the mapping alive.
class SafetensorsFile {
 public:
  explicit SafetensorsFile(const std::filesystem::path& path);
  const SafetensorsHeader& header() const { return header_; }
  std::vector<std::string> names() const;
  bool has(const std::string& name) const;
  torch::Tensor get(const std::string& name) const;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  std::shared_ptr<MappedFile> file_;
  SafetensorsHeader header_;
  std::map<std::string, size_t> index_;
};

// Every weight of a model directory: model.safetensors, or the shards listed by
// model.safetensors.index.json. Names resolve to their shard.
class CheckpointReader {
 public:
  explicit CheckpointReader(const std::filesystem::path& model_dir);
  std::vector<std::string> names() const;
  bool has(const std::string& name) const;
  torch::Tensor get(const std::string& name) const;  // error names the tensor and directory when absent
  std::vector<int64_t> shape(const std::string& name) const;

 private:
  std::filesystem::path dir_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, size_t> where_;
};

using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

// Writes one file atomically (temp + rename). Tensors may live on any device; they are copied to CPU.
void write_safetensors(const std::filesystem::path& path, const NamedTensors& tensors,
                       const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

// Writes model.safetensors, or when the total exceeds max_shard_bytes, model-0000i-of-0000n.safetensors
// plus model.safetensors.index.json (HF layout) into dir.
void write_checkpoint(const std::filesystem::path& dir, const NamedTensors& tensors,
                      uint64_t max_shard_bytes = 5ull << 30,
                      const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

}  // namespace kdae::io
