// YAML run configs (kdae distill / kdae align) parsed at the edge into train::DistillOptions.
// One table (run-config.cpp) lists every key with its type, default and help text; parsing,
// `--set key=value` overrides and docs/config.md are all generated from it. Unknown keys and wrong
// types are errors naming the file, line, key and expected type.
#pragma once
#include <filesystem>
#include <string>
#include <vector>

#include "train/distill-options.h"

namespace kdae::cli {

// Reads path, then applies overrides ("key=value", value parsed as YAML with the same rules), then
// validates for kind. A key given twice in the file is an error.
train::DistillOptions load_run_config(const std::filesystem::path& path, const std::vector<std::string>& overrides,
                                      train::RunKind kind,
                                      train::OptionsUse use = train::OptionsUse::training);

// Same from YAML text (source names it in errors); no validation.
void apply_config_text(train::DistillOptions& options, const std::string& yaml_text, const std::string& source);
void apply_config_override(train::DistillOptions& options, const std::string& key_equals_value);

// docs/config.md, generated from the key table (tests/train/run_config_test.cpp checks the file is up to date).
std::string config_reference_markdown();

// Stable text of every setting that must not change across a resume, and its 64-bit FNV-1a hash in
// hex (stored in trainer_state.json). Paths of outputs, logging/saving cadence, devices and threads
// are left out: changing those on resume is legitimate.
std::string resume_relevant_config(const train::DistillOptions& options);
std::string config_hash(const train::DistillOptions& options);

}  // namespace kdae::cli
