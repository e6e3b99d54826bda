// The frozen teachers of a run and which samples each one serves. kdae distill has one teacher for
// every sample; kdae align maps domain names to teachers (the binary general/domain form is the
// two-teacher case). Teachers live on their own device and dtype in inference mode; each micro-batch
// runs only the teachers its rows need, and each only on those rows.
#pragma once
#include <torch/types.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "model/transformer.h"
#include "train/distill-options.h"

namespace kdae::tok {
class Tokenizer;
}

namespace kdae::train {

class TeacherCache;

struct Teacher {
  std::string name;        // the domain it serves ("*" = every domain)
  std::string path;
  double temperature = 1.0;
  double weight = 1.0;
  model::Transformer model{nullptr};          // null when the signal comes from `cache`
  std::shared_ptr<TeacherCache> cache;        // kdae teacher-cache output (distill's teacher_cache)
  torch::Device device = torch::kCPU;
};

class TeacherSet {
 public:
  // Loads every teacher and checks it against the student: same tokenizer (vocabulary and special
  // tokens) and the same true vocabulary size; errors name both paths and what differs.
  TeacherSet(const DistillOptions& options, RunKind kind, const tok::Tokenizer& student_tokenizer,
             const model::ModelConfig& student_config);

  // Teachers already in memory (tests, tools): each serves the domain it is named for.
  explicit TeacherSet(std::vector<Teacher> teachers);

  // Teacher index serving each domain of a dataset (domain_names from data::Dataset); -1 when none
  // does (the caller skips or rejects those samples per on_missing_domain).
  std::vector<int> assign(const std::vector<std::string>& domain_names) const;

  size_t size() const { return teachers_.size(); }
  Teacher& at(size_t i) { return teachers_.at(i); }
  const Teacher& at(size_t i) const { return teachers_.at(i); }
  // The teacher serving domain "general" (align's reference teacher), or the only teacher; -1 if none.
  int reference_index() const;
  // Where "teachers are kept": a sentence for the run log.
  std::string describe() const;
  // Some teacher's layers are split over the ranks (teacher_sharding: full): every rank must run
  // such a teacher whenever any rank does (train/teacher-sharding.h).
  bool sharded() const { return sharded_; }

 private:
  std::vector<Teacher> teachers_;
  std::map<std::string, int> by_domain_;
  bool sharded_ = false;
};

// Throws unless the two tokenizers give identical ids: compares fingerprints, and on mismatch names
// the first differing piece (vocab size, bos/eos/pad tokens).
void check_same_tokenizer(const tok::Tokenizer& student, const std::string& student_path,
                          const tok::Tokenizer& teacher, const std::string& teacher_path);

}  // namespace kdae::train
