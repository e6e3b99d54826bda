// Dimension legend: H = attention heads (q) or kv heads (k), hd = head_dim, D = hidden size,
// E = experts, R = rows of a weight (out features), C = columns (in features).
#include "io/gguf-convert.h"

#include <ATen/Parallel.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <charconv>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>

#include "common/device.h"
#include "common/error.h"
#include "common/files.h"
#include "io/gguf-quants.h"
#include "io/gguf-tokenizer.h"
#include "io/safetensors.h"
#include "io/tensor-names.h"

namespace kdae::io {
namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// A float32 hyper-parameter as the shortest decimal that reads back to the same float32
// (1e-05, not 9.99999974738e-06), so config.json looks like the HF original.
double tidy_f32(double v) {
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, static_cast<float>(v));
  return std::stod(std::string(buf, res.ptr));
}

std::string arch_key(const std::string& arch, const std::string& suffix) { return arch + "." + suffix; }

int64_t config_int(const json& config, const char* key, const fs::path& where) {
  if (!config.contains(key) || !config[key].is_number_integer())
    fail(where.string(), ": config.json key '", key, "' is missing or not an integer");
  return config[key].get<int64_t>();
}

// Bytes of one tensor in a GGUF type, from fp32 values.
std::vector<uint8_t> encode(const torch::Tensor& t, GgmlType type) {
  const torch::Tensor f = t.to(torch::kFloat32).contiguous();  // same shape, fp32
  const float* p = f.data_ptr<float>();
  const uint64_t n = static_cast<uint64_t>(f.numel());
  switch (type) {
    case GgmlType::F32: return std::vector<uint8_t>(reinterpret_cast<const uint8_t*>(p), reinterpret_cast<const uint8_t*>(p + n));
    case GgmlType::F16: return quantize_f16(p, n);
    case GgmlType::Q8_0: return quantize_q8_0(p, n);
    default: fail("GGUF export: unsupported output type");
  }
}

}  // namespace

GgufModelFile::GgufModelFile(const fs::path& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) fail(path.string(), ": cannot open GGUF file: ", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(path.string(), ": not a regular file");
  }
  size_ = static_cast<size_t>(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    ::close(fd);
    if (p == MAP_FAILED) fail(path.string(), ": mmap failed: ", std::strerror(errno));
    data_ = static_cast<const uint8_t*>(p);
  } else {
    ::close(fd);
  }
  try {
    file_ = parse_gguf(data_, size_, path.string());
  } catch (...) {
    if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
    throw;
  }
}

GgufModelFile::~GgufModelFile() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

torch::Tensor GgufModelFile::tensor_f32(const GgufTensorInfo& info) const {
  const std::string what = path_.string() + ": tensor " + info.name;
  if (!can_dequantize(info.type))
    dequantize(info.type, nullptr, nullptr, 0, what);  // throws the "cannot dequantize" error
  torch::Tensor out = torch::empty(info.torch_shape(), torch::kFloat32);  // (reversed GGUF dims)
  const GgmlTypeInfo* ti = ggml_type_info(static_cast<uint32_t>(info.type));
  const uint64_t row = info.dims[0], rows = info.n_elements / std::max<uint64_t>(row, 1);
  const uint64_t row_bytes = row / ti->block_size * ti->type_size;
  const uint8_t* src = data_ + file_.data_offset + info.offset;
  float* dst = out.data_ptr<float>();
  if (row == 0) return out;
  at::parallel_for(0, static_cast<int64_t>(rows), 64, [&](int64_t begin, int64_t end) {
    dequantize(info.type, src + begin * row_bytes, dst + begin * row, (end - begin) * row, what);
  });
  return out;
}

torch::Tensor GgufModelFile::tensor_f32(const std::string& name) const {
  const GgufTensorInfo* info = file_.find_tensor(name);
  if (!info) fail(path_.string(), ": no tensor named '", name, "'");
  return tensor_f32(*info);
}

static torch::Tensor regroup_rope_rows(const torch::Tensor& w, int64_t n_heads, bool to_hf) {
  const int64_t rows = w.size(0);
  if (n_heads <= 0 || rows % (2 * n_heads) != 0)
    fail("rope permutation: ", rows, " rows do not split into ", n_heads, " heads of even size");
  std::vector<int64_t> split = {n_heads, 2, rows / n_heads / 2};  // HF order: (H, half, hd/2)
  if (to_hf) std::swap(split[1], split[2]);                       // GGUF order: (H, hd/2, pair)
  for (int64_t d = 1; d < w.dim(); ++d) split.push_back(w.size(d));
  return w.reshape(split).transpose(1, 2).reshape(w.sizes()).contiguous();  // (H*hd, ...)
}

torch::Tensor unpermute_rope_rows(const torch::Tensor& w, int64_t n_heads) { return regroup_rope_rows(w, n_heads, true); }
torch::Tensor permute_rope_rows(const torch::Tensor& w, int64_t n_heads) { return regroup_rope_rows(w, n_heads, false); }

void convert_gguf_to_hf(const fs::path& gguf_path, const fs::path& out_dir, const GgufToHfOptions& options) {
  if (fs::exists(out_dir) && !options.overwrite)
    fail(out_dir.string(), ": already exists (pass --overwrite to replace it)");
  GgufModelFile model(gguf_path);
  const GgufFile& f = model.file();
  const std::string src = gguf_path.string();
  const std::string arch = f.get("general.architecture").as_string(src + ": key general.architecture");
  bool has_experts = false;
  for (const auto& t : f.tensors) has_experts |= t.name.find("_exps.") != std::string::npos ||
                                                t.name.find("ffn_gate_inp") != std::string::npos;
  const auto hf_arch = hf_architecture_for_gguf(arch, has_experts);
  if (!hf_arch) fail(src, ": architecture '", arch, "' is not supported (supported: llama, mistral, qwen2)");

  json config = {{"architectures", {*hf_arch}}, {"model_type", hf_model_type(*hf_arch)}, {"hidden_act", "silu"},
                 {"torch_dtype", dtype_name(options.dtype)}, {"initializer_range", 0.02}, {"use_cache", true}};
  for (const auto& k : hparam_keys()) {
    const GgufValue* v = f.find(arch_key(arch, k.gguf_suffix));
    if (!v) continue;
    const std::string what = src + ": key " + arch_key(arch, k.gguf_suffix);
    if (k.is_float) config[k.hf_key] = tidy_f32(v->as_double(what));
    else config[k.hf_key] = v->as_int(what);
  }
  for (const char* required : {"hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"})
    if (!config.contains(required)) fail(src, ": hyper-parameter for config key '", required, "' is missing");
  if (!config.contains("num_key_value_heads")) config["num_key_value_heads"] = config["num_attention_heads"];
  if (!config.contains("rms_norm_eps")) config["rms_norm_eps"] = 1e-5;
  if (!config.contains("rope_theta")) config["rope_theta"] = 10000.0;
  if (!config.contains("vocab_size")) {
    if (const GgufValue* tokens = f.find("tokenizer.ggml.tokens"))
      config["vocab_size"] = tokens->items.size();
    else if (const GgufTensorInfo* e = f.find_tensor("token_embd.weight"))
      config["vocab_size"] = e->dims.size() > 1 ? e->dims[1] : 0;
  }
  if (const GgufValue* type = f.find(arch_key(arch, "rope.scaling.type"))) {
    const std::string t = type->as_string(src + ": key rope.scaling.type");
    if (t != "none") {
      json scaling = {{"rope_type", t}, {"type", t}};
      if (const GgufValue* factor = f.find(arch_key(arch, "rope.scaling.factor")))
        scaling["factor"] = tidy_f32(factor->as_double(src + ": key rope.scaling.factor"));
      if (const GgufValue* orig = f.find(arch_key(arch, "rope.scaling.original_context_length")))
        scaling["original_max_position_embeddings"] = orig->as_int(src + ": key rope.scaling.original_context_length");
      config["rope_scaling"] = scaling;
    }
  }
  json rope = config.contains("rope_scaling") ? config["rope_scaling"] : json{{"rope_type", "default"}};
  rope["rope_theta"] = config["rope_theta"];
  config["rope_parameters"] = rope;  // transformers 5 spelling; rope_theta stays top-level for older readers
  if (f.find_tensor("rope_freqs.weight"))
    std::cerr << "kdae convert: warning: " << src << " has rope_freqs (llama3-style rope scaling); "
              << "config.json does not reproduce it\n";
  const bool tied = f.find_tensor("output.weight") == nullptr;
  config["tie_word_embeddings"] = tied;
  bool biases = false;
  for (const auto& t : f.tensors) biases |= t.name.find("attn_q.bias") != std::string::npos;
  if (*hf_arch != "Qwen2ForCausalLM") config["attention_bias"] = biases;
  if (*hf_arch == "MixtralForCausalLM" && !config.contains("num_local_experts"))
    fail(src, ": MoE tensors present but ", arch, ".expert_count is missing");
  json generation = {{"_from_model_config", true}};
  for (const auto& [gguf_key, hf_key] : std::vector<std::pair<std::string, std::string>>{
           {"tokenizer.ggml.bos_token_id", "bos_token_id"},
           {"tokenizer.ggml.eos_token_id", "eos_token_id"},
           {"tokenizer.ggml.padding_token_id", "pad_token_id"}}) {
    if (const GgufValue* v = f.find(gguf_key)) {
      config[hf_key] = v->as_int(src + ": key " + gguf_key);
      generation[hf_key] = config[hf_key];
    }
  }

  const int64_t n_heads = config["num_attention_heads"].get<int64_t>();
  const int64_t n_kv_heads = config["num_key_value_heads"].get<int64_t>();
  NamedTensors tensors;
  for (const auto& info : f.tensors) {
    const auto hf = gguf_to_hf_name(info.name);
    if (!hf) {
      std::cerr << "kdae convert: note: " << src << ": tensor " << info.name << " has no HF counterpart; skipped\n";
      continue;
    }
    torch::Tensor w = model.tensor_f32(info);  // (R, C) or (D,) or (E, R, C)
    if (is_rope_permuted(arch, info.name))
      w = unpermute_rope_rows(w, info.name.find("attn_q") != std::string::npos ? n_heads : n_kv_heads);
    if (hf->expert == -2) {
      for (int64_t e = 0; e < w.size(0); ++e)
        tensors.emplace_back(hf_expert_name(hf->name, int(e)), w[e].to(options.dtype).contiguous());  // (R, C)
    } else {
      tensors.emplace_back(hf->name, w.to(options.dtype));
    }
  }

  const HfTokenizerFiles tok = f.find("tokenizer.ggml.model") ? gguf_tokenizer_to_hf(f) : HfTokenizerFiles{};
  const fs::path staging = staging_path_for(out_dir);
  remove_tree(staging);
  fs::create_directories(staging);
  try {
    write_checkpoint(staging, tensors);
    write_file_atomic(staging / "config.json", config.dump(2) + "\n");
    write_file_atomic(staging / "generation_config.json", generation.dump(2) + "\n");
    if (!tok.tokenizer_json.empty()) {
      write_file_atomic(staging / "tokenizer.json", tok.tokenizer_json);
      write_file_atomic(staging / "tokenizer_config.json", tok.tokenizer_config_json + "\n");
    }
    if (!tok.chat_template.empty()) write_file_atomic(staging / "chat_template.jinja", tok.chat_template);
    publish_directory(staging, out_dir, options.overwrite);
  } catch (...) {
    remove_tree(staging);
    throw;
  }
}

void convert_hf_to_gguf(const fs::path& hf_dir, const fs::path& out_path, const HfToGgufOptions& options) {
  if (fs::exists(out_path) && !options.overwrite)
    fail(out_path.string(), ": already exists (pass --overwrite to replace it)");
  const fs::path config_path = hf_dir / "config.json";
  json config;
  try {
    config = json::parse(read_file(config_path));
  } catch (const json::exception& e) {
    fail(config_path.string(), ": not valid JSON: ", e.what());
  }
  if (!config.contains("architectures") || !config["architectures"].is_array() || config["architectures"].empty())
    fail(config_path.string(), ": key 'architectures' is missing");
  const std::string hf_arch = config["architectures"][0].get<std::string>();
  const auto arch_opt = gguf_arch_for_hf(hf_arch);
  if (!arch_opt) fail(config_path.string(), ": architecture ", hf_arch, " is not supported for GGUF export");
  const std::string arch = *arch_opt;

  std::vector<std::pair<std::string, GgufValue>> md;
  md.emplace_back("general.architecture", GgufValue::of_string(arch));
  md.emplace_back("general.name", GgufValue::of_string(fs::absolute(hf_dir).lexically_normal().filename().string()));
  const uint32_t file_type = options.type == GgmlType::F32 ? 0 : options.type == GgmlType::F16 ? 1 : 7;
  md.emplace_back("general.file_type", GgufValue::of_u32(file_type));
  // transformers 5 nests rope settings under "rope_parameters"; older configs keep them top-level.
  if (config.contains("rope_parameters") && config["rope_parameters"].is_object()) {
    const json& rp = config["rope_parameters"];
    if (!config.contains("rope_theta") && rp.contains("rope_theta")) config["rope_theta"] = rp["rope_theta"];
    if (!config.contains("rope_scaling") && rp.value("rope_type", "default") != "default") config["rope_scaling"] = rp;
  }
  for (const auto& k : hparam_keys()) {
    if (!config.contains(k.hf_key) || config[k.hf_key].is_null()) continue;
    const std::string key = arch_key(arch, k.gguf_suffix);
    if (k.is_float) md.emplace_back(key, GgufValue::of_f32(config[k.hf_key].get<float>()));
    else md.emplace_back(key, GgufValue::of_u32(static_cast<uint32_t>(config_int(config, k.hf_key, config_path))));
  }
  const int64_t n_heads = config_int(config, "num_attention_heads", config_path);
  const int64_t n_kv_heads = config.contains("num_key_value_heads") ? config_int(config, "num_key_value_heads", config_path) : n_heads;
  const int64_t head_dim = config.contains("head_dim") && config["head_dim"].is_number_integer()
                               ? config["head_dim"].get<int64_t>()
                               : config_int(config, "hidden_size", config_path) / n_heads;
  md.emplace_back(arch_key(arch, "rope.dimension_count"), GgufValue::of_u32(uint32_t(head_dim)));
  if (config.contains("rope_scaling") && config["rope_scaling"].is_object()) {
    const json& rs = config["rope_scaling"];
    const std::string type = rs.value("rope_type", rs.value("type", ""));
    if (type == "linear" || type == "yarn") {
      md.emplace_back(arch_key(arch, "rope.scaling.type"), GgufValue::of_string(type));
      md.emplace_back(arch_key(arch, "rope.scaling.factor"), GgufValue::of_f32(rs.value("factor", 1.0f)));
    }
  }
  if (fs::exists(hf_dir / "tokenizer.json")) {
    const std::string tc = fs::exists(hf_dir / "tokenizer_config.json") ? read_file(hf_dir / "tokenizer_config.json") : "";
    for (auto& kv : hf_tokenizer_to_gguf(read_file(hf_dir / "tokenizer.json"), tc, (hf_dir / "tokenizer.json").string()))
      md.push_back(std::move(kv));
  }

  // Collect HF tensors under their GGUF names; experts gather into one stacked tensor per name.
  CheckpointReader ckpt(hf_dir);
  std::vector<std::string> order;
  std::map<std::string, std::vector<std::string>> sources;  // gguf name -> HF names (experts by index)
  const bool tied = config.value("tie_word_embeddings", false);
  for (const auto& name : ckpt.names()) {
    if (tied && name == "lm_head.weight") continue;
    const auto g = hf_to_gguf_name(name);
    if (!g) {
      std::cerr << "kdae convert: note: " << hf_dir.string() << ": tensor " << name << " has no GGUF name; skipped\n";
      continue;
    }
    auto& list = sources[g->first];
    if (list.empty()) order.push_back(g->first);
    if (g->second >= 0) {
      if (size_t(g->second) >= list.size()) list.resize(g->second + 1);
      list[g->second] = name;
    } else {
      list = {name};
    }
  }
  // llama.cpp's order: embeddings, layers in order, then the head.
  auto rank = [](const std::string& n) -> std::pair<int64_t, std::string> {
    if (n.rfind("token_embd", 0) == 0) return {-1, n};
    if (n.rfind("blk.", 0) == 0) return {std::stoll(n.substr(4)), n};
    return {INT64_MAX, n};
  };
  std::stable_sort(order.begin(), order.end(), [&](auto& a, auto& b) { return rank(a) < rank(b); });

  std::vector<GgufTensorInfo> infos;
  for (const auto& name : order) {
    const auto& list = sources[name];
    for (size_t e = 0; e < list.size(); ++e)
      if (list[e].empty()) fail(hf_dir.string(), ": expert ", e, " of ", name, " is missing");
    std::vector<int64_t> shape = ckpt.shape(list[0]);
    if (list.size() > 1 || name.find("_exps.") != std::string::npos) shape.insert(shape.begin(), int64_t(list.size()));
    GgufTensorInfo info;
    info.name = name;
    info.dims.assign(shape.rbegin(), shape.rend());
    info.type = shape.size() == 1 ? GgmlType::F32 : options.type;
    if (info.type == GgmlType::Q8_0 && info.dims[0] % 32 != 0) info.type = GgmlType::F16;  // as llama.cpp falls back
    infos.push_back(info);
  }
  const std::string header = make_gguf_header(md, infos, 32);
  AtomicFileWriter out(out_path);
  out.write(header.data(), header.size());
  uint64_t written = 0;  // bytes of the data section so far
  for (const auto& info : infos) {
    const auto& list = sources[info.name];
    torch::Tensor w;
    if (list.size() == 1 && info.name.find("_exps.") == std::string::npos) {
      w = ckpt.get(list[0]);  // (R, C) or (D,)
    } else {
      std::vector<torch::Tensor> experts;
      for (const auto& n : list) experts.push_back(ckpt.get(n));
      w = torch::stack(experts);  // (E, R, C)
    }
    w = w.to(torch::kFloat32);
    if (is_rope_permuted(arch, info.name))
      w = permute_rope_rows(w, info.name.find("attn_q") != std::string::npos ? n_heads : n_kv_heads);
    const std::vector<uint8_t> bytes = encode(w, info.type);
    if (bytes.size() != info.n_bytes) fail("GGUF export: size mismatch for tensor ", info.name);
    const std::string pad(info.offset - written, '\0');
    out.write(pad.data(), pad.size());
    out.write(bytes.data(), bytes.size());
    written = info.offset + bytes.size();
  }
  out.commit();
}

}  // namespace kdae::io
