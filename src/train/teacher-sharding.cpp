#include "train/teacher-sharding.h"

#include <torch/nn/module.h>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "common/error.h"

namespace kdae::train {
namespace {

constexpr int64_t kAlign = 64;  // every tensor starts aligned, so byte views can be viewed as its dtype

int64_t aligned(int64_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

torch::Tensor bytes_of(const torch::Tensor& t) { return t.contiguous().view({-1}).view(torch::kUInt8); }

class ShardedLayers : public model::LayerResidency {
 public:
  ShardedLayers(model::Transformer& teacher, dist::Group& group, int64_t teacher_id, torch::Device device)
      : group_(group), teacher_id_(teacher_id), device_(device) {
    torch::NoGradGuard no_grad;
    for (int64_t l = 0; l < teacher->config().num_layers; ++l) layers_.push_back(split(*teacher->model->layers[l], l));
  }

  void acquire(int64_t index) override {
    torch::NoGradGuard no_grad;
    Layer& layer = layers_.at(index);
    const std::string what = "gathering teacher " + std::to_string(teacher_id_) + " layer " + std::to_string(index);
    check_in_step(layer, index, what);
    torch::Tensor whole = torch::empty({layer.part.numel() * group_.size()}, layer.part.options());  // (N x part)
    group_.all_gather(layer.part, whole, what);
    for (size_t k = 0; k < layer.params.size(); ++k) {
      torch::Tensor& p = layer.params[k];
      p.set_data(whole.narrow(0, layer.offsets[k], layer.numels[k] * layer.element_sizes[k])
                     .view(layer.dtypes[k])
                     .view(layer.shapes[k]));
    }
  }

  void release(int64_t index) override {
    for (auto& p : layers_.at(index).params) p.set_data(torch::empty({0}, p.options().device(device_)));
  }

 private:
  struct Layer {
    std::vector<torch::Tensor> params;
    std::vector<int64_t> offsets, numels, element_sizes;
    std::vector<std::vector<int64_t>> shapes;
    std::vector<torch::ScalarType> dtypes;
    torch::Tensor part;  // (bytes / N, padded) uint8: this rank's slice of the layer
  };

  Layer split(torch::nn::Module& module, int64_t index) {
    Layer layer;
    int64_t bytes = 0;
    for (auto& p : module.parameters()) {
      if (!p.is_contiguous()) fail("teacher layer ", index, ": a non-contiguous weight cannot be sharded");
      layer.params.push_back(p);
      layer.offsets.push_back(bytes);
      layer.numels.push_back(p.numel());
      layer.element_sizes.push_back(static_cast<int64_t>(p.element_size()));
      layer.shapes.push_back(p.sizes().vec());
      layer.dtypes.push_back(p.scalar_type());
      bytes = aligned(bytes + p.numel() * static_cast<int64_t>(p.element_size()));
    }
    const int64_t ranks = group_.size();
    const int64_t part_bytes = aligned((bytes + ranks - 1) / ranks);
    const auto device = layer.params.empty() ? torch::Device(torch::kCPU) : layer.params.front().device();
    torch::Tensor flat = torch::zeros({part_bytes * ranks}, torch::TensorOptions().dtype(torch::kUInt8).device(device));
    for (size_t k = 0; k < layer.params.size(); ++k)
      flat.narrow(0, layer.offsets[k], layer.numels[k] * layer.element_sizes[k]).copy_(bytes_of(layer.params[k]));
    layer.part = flat.narrow(0, part_bytes * group_.rank(), part_bytes).to(device_, /*non_blocking=*/false, /*copy=*/true);
    for (auto& p : layer.params) p.set_data(torch::empty({0}, p.options().device(device_)));
    return layer;
  }

  // Every rank says which teacher and layer it gathers; they must agree.
  void check_in_step(const Layer& layer, int64_t index, const std::string& what) {
    const int64_t tag = teacher_id_ * (int64_t{1} << 32) + index;
    const auto opts = torch::TensorOptions().dtype(torch::kInt64).device(layer.part.device());
    torch::Tensor tags = torch::empty({group_.size()}, opts);  // (N)
    group_.all_gather(torch::full({1}, tag, opts), tags, what);
    const auto host = tags.to(torch::kCPU);
    for (int r = 0; r < group_.size(); ++r) {
      const int64_t got = host[r].item<int64_t>();
      if (got != tag)
        fail(what, ": rank ", r, " is gathering teacher ", got >> 32, " layer ", got & 0xffffffff,
             " instead; the ranks ran their sharded teachers in different orders");
    }
  }

  dist::Group& group_;
  int64_t teacher_id_;
  torch::Device device_;
  std::vector<Layer> layers_;
};

}  // namespace

TeacherSharding parse_teacher_sharding(const std::string& name) {
  if (name == "replicate") return TeacherSharding::replicate;
  if (name == "full") return TeacherSharding::full;
  fail("teacher_sharding '", name, "': expected replicate or full");
}

void shard_teacher_layers(model::Transformer& teacher, dist::Group& group, int64_t teacher_id, torch::Device device) {
  teacher->residency = std::make_shared<ShardedLayers>(teacher, group, teacher_id, device);
  teacher->to(device);  // what stays whole: embeddings, final norm, head
#if defined(__GLIBC__)
  malloc_trim(0);  // the host copy's layers are free now, but scattered among the parts: hand them back
#endif
}

}  // namespace kdae::train
