#include "train/teacher-set.h"

#include <sstream>

#include "common/device.h"
#include "common/error.h"
#include "dist/process-group.h"
#include "io/hf-model.h"
#include "train/teacher-cache.h"
#include "train/teacher-sharding.h"
#include "tokenizer/tokenizer.h"

namespace kdae::train {
namespace {

std::string token_text(const tok::Tokenizer& t, std::optional<tok::TokenId> id) {
  return id ? t.id_to_token(*id) + " (" + std::to_string(*id) + ")" : std::string("none");
}

}  // namespace

void check_same_tokenizer(const tok::Tokenizer& student, const std::string& student_path,
                          const tok::Tokenizer& teacher, const std::string& teacher_path) {
  if (student.fingerprint() == teacher.fingerprint()) return;
  std::ostringstream why;
  if (student.vocab_size() != teacher.vocab_size())
    why << "vocabulary sizes differ (" << student.vocab_size() << " vs " << teacher.vocab_size() << ")";
  else if (student.special().bos != teacher.special().bos)
    why << "bos tokens differ (" << token_text(student, student.special().bos) << " vs "
        << token_text(teacher, teacher.special().bos) << ")";
  else if (student.special().eos != teacher.special().eos)
    why << "eos tokens differ (" << token_text(student, student.special().eos) << " vs "
        << token_text(teacher, teacher.special().eos) << ")";
  else
    why << "vocabularies, merges or normalisation differ (tokenizer fingerprints " << student.fingerprint() << " vs "
        << teacher.fingerprint() << ")";
  fail("teacher ", teacher_path, " and student ", student_path, " use different tokenizers: ", why.str(),
       ". Token-level distillation needs identical token ids.");
}

TeacherSet::TeacherSet(std::vector<Teacher> teachers) : teachers_(std::move(teachers)) {
  for (size_t i = 0; i < teachers_.size(); ++i) by_domain_[teachers_[i].name] = static_cast<int>(i);
}

TeacherSet::TeacherSet(const DistillOptions& o, RunKind kind, const tok::Tokenizer& student_tokenizer,
                       const model::ModelConfig& student_config) {
  std::vector<Teacher> specs;
  auto add_cache = [&](const std::string& domain, const std::string& dir, double temperature, double weight) {
    Teacher t{domain, dir, temperature, weight, nullptr, nullptr};
    t.cache = std::make_shared<TeacherCache>(TeacherCache::open(dir));
    if (!t.cache->complete())
      fail("teacher cache ", dir, " covers ", t.cache->samples_covered(), " of ", t.cache->header().dataset_samples,
           " samples; finish it with kdae teacher-cache (it resumes)");
    const std::string& only = t.cache->header().domain;
    if (!only.empty() && only != domain)
      fail("teacher cache ", dir, " holds only the samples of domain '", only, "' (kdae teacher-cache --domain) but ",
           domain == "*" ? std::string("this run needs every sample") : "serves domain '" + domain + "' here",
           "; build it without --domain, or with --domain ", domain == "*" ? std::string("omitted") : domain);
    by_domain_[domain] = static_cast<int>(teachers_.size());
    teachers_.push_back(std::move(t));
  };
  if (kind == RunKind::distill && !o.teacher_cache.empty()) {
    add_cache("*", o.teacher_cache, o.temperature, 1.0);
    return;
  }
  if (kind == RunKind::distill) {
    specs.push_back(Teacher{"*", o.target_model_path, o.temperature, 1.0, nullptr, nullptr});
  } else {
    for (const auto& [domain, spec] : o.teachers) {
      if (spec.cache.empty())
        specs.push_back(Teacher{domain, spec.path, spec.temperature, spec.weight, nullptr, nullptr});
      else
        add_cache(domain, spec.cache, spec.temperature, spec.weight);
    }
  }
  const auto device = parse_device(o.teacher_device);
  const auto dtype = parse_dtype(o.teacher_dtype);
  std::map<std::string, int> loaded;  // path -> index: one model serves every domain that names it
  for (auto& t : specs) {
    if (auto it = loaded.find(t.path); it != loaded.end()) {
      const Teacher& same = teachers_[it->second];
      if (same.temperature != t.temperature || same.weight != t.weight) {
        // A second entry with its own temperature/weight shares the weights but not the settings.
        t.model = same.model;
        t.device = same.device;
        by_domain_[t.name] = static_cast<int>(teachers_.size());
        teachers_.push_back(std::move(t));
      } else {
        by_domain_[t.name] = it->second;
      }
      continue;
    }
    auto tokenizer = tok::Tokenizer::load(t.path);
    check_same_tokenizer(student_tokenizer, o.base_model_path, *tokenizer, t.path);
    const bool split = parse_teacher_sharding(o.teacher_sharding) == TeacherSharding::full && dist::world().distributed();
    t.model = io::load_model(t.path, {split ? torch::Device(torch::kCPU) : device, dtype});
    t.model->eval();
    for (auto& p : t.model->parameters()) p.set_requires_grad(false);
    t.device = device;
    if (split) {
      shard_teacher_layers(t.model, dist::world(), static_cast<int64_t>(teachers_.size()), device);
      sharded_ = true;
    }
    const int64_t true_vocab = student_tokenizer.vocab_size();
    if (t.model->config().vocab_size < true_vocab || student_config.vocab_size < true_vocab)
      fail("teacher ", t.path, " has ", t.model->config().vocab_size, " logit rows and the student ",
           student_config.vocab_size, ", fewer than the tokenizer's ", true_vocab, " tokens");
    loaded[t.path] = static_cast<int>(teachers_.size());
    by_domain_[t.name] = static_cast<int>(teachers_.size());
    teachers_.push_back(std::move(t));
  }
}

std::vector<int> TeacherSet::assign(const std::vector<std::string>& domain_names) const {
  std::vector<int> out;
  for (const auto& name : domain_names) {
    auto it = by_domain_.find("*");
    if (it == by_domain_.end()) it = by_domain_.find(name);
    out.push_back(it == by_domain_.end() ? -1 : it->second);
  }
  return out;
}

int TeacherSet::reference_index() const {
  if (auto it = by_domain_.find("*"); it != by_domain_.end()) return it->second;
  if (auto it = by_domain_.find("general"); it != by_domain_.end()) return it->second;
  return -1;
}

std::string TeacherSet::describe() const {
  std::ostringstream s;
  for (size_t i = 0; i < teachers_.size(); ++i) {
    const auto& t = teachers_[i];
    if (i) s << "; ";
    if (t.cache) {
      s << "teacher cache " << (t.name == "*" ? std::string() : t.name + " = ") << t.path << " (top-" << t.cache->top_k() << " log-probs + tail mass, captured at temperature "
        << t.cache->capture_temperature() << "; no teacher model loaded)";
      continue;
    }
    s << "teacher " << (t.name == "*" ? std::string("(all samples)") : t.name) << " = " << t.path
      << " on " << t.device.str() << " (" << dtype_name(t.model->parameters().front().scalar_type())
      << (t.model->residency ? ", layers split over " + std::to_string(dist::world().size()) + " ranks, gathered one at a time"
                             : std::string(", all teachers resident")) << ", no autograd)";
  }
  return s.str();
}

}  // namespace kdae::train
