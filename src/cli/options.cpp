#include "cli/options.h"

#include <algorithm>
#include <sstream>

#include "common/error.h"
#include "common/threads.h"

namespace kdae::cli {

bool Args::has(const std::string& name) const { return values_.count(name) > 0; }

std::optional<std::string> Args::maybe(const std::string& name) const {
  auto it = values_.find(name);
  if (it != values_.end()) return it->second.back();
  auto d = defaults_.find(name);
  if (d != defaults_.end() && !d->second.empty()) return d->second;
  return std::nullopt;
}

std::string Args::get(const std::string& name) const {
  auto value = maybe(name);
  if (!value) usage_fail("--", name, " is required");
  return *value;
}

std::vector<std::string> Args::all(const std::string& name) const {
  auto it = values_.find(name);
  return it == values_.end() ? std::vector<std::string>{} : it->second;
}

long long Args::get_int(const std::string& name) const {
  const std::string text = get(name);
  try {
    size_t used = 0;
    const long long v = std::stoll(text, &used);
    if (used == text.size()) return v;
  } catch (const std::exception&) {
  }
  usage_fail("--", name, " expects an integer, got '", text, "'");
}

double Args::get_double(const std::string& name) const {
  const std::string text = get(name);
  try {
    size_t used = 0;
    const double v = std::stod(text, &used);
    if (used == text.size()) return v;
  } catch (const std::exception&) {
  }
  usage_fail("--", name, " expects a number, got '", text, "'");
}

static const Option* find_option(const Command& command, const std::string& name) {
  for (const auto& option : command.options)
    if (option.name == name) return &option;
  return nullptr;
}

Args parse_args(const Command& command, const std::vector<std::string>& argv) {
  Args args;
  for (const auto& option : command.options) args.defaults_[option.name] = option.default_value;
  for (size_t i = 0; i < argv.size(); ++i) {
    const std::string& word = argv[i];
    if (word.rfind("--", 0) != 0 || word == "--") {
      if (command.positional_help.empty()) usage_fail("kdae ", command.name, ": unexpected argument '", word, "'");
      args.positional_.push_back(word);
      continue;
    }
    std::string name = word.substr(2);
    std::optional<std::string> inline_value;
    if (auto eq = name.find('='); eq != std::string::npos) {
      inline_value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    const Option* option = find_option(command, name);
    if (!option) usage_fail("kdae ", command.name, ": unknown option --", name, " (see kdae ", command.name, " --help)");
    std::string value;
    if (option->value_name.empty()) {
      if (inline_value) usage_fail("--", name, " takes no value");
    } else if (inline_value) {
      value = *inline_value;
    } else {
      if (i + 1 >= argv.size()) usage_fail("--", name, " needs a value ", option->value_name);
      value = argv[++i];
    }
    auto& slot = args.values_[name];
    if (option->multi && !inline_value) {
      if (!slot.empty()) usage_fail("--", name, " given twice");
      slot.push_back(value);
      while (i + 1 < argv.size() && argv[i + 1].rfind("--", 0) != 0) slot.push_back(argv[++i]);
      continue;
    }
    if (!slot.empty() && !option->repeatable) usage_fail("--", name, " given twice");
    slot.push_back(value);
  }
  for (const auto& option : command.options)
    if (option.required && !args.has(option.name)) usage_fail("kdae ", command.name, ": --", option.name, " is required");
  return args;
}

std::string help_text(const Command& command) {
  std::ostringstream out;
  out << "usage: kdae " << command.name << " [options]";
  if (!command.positional_help.empty()) out << " " << command.positional_help;
  out << "\n\n" << command.summary << "\n";
  if (!command.description.empty()) out << "\n" << command.description << "\n";
  out << "\noptions:\n";
  size_t width = 0;
  std::vector<std::string> heads;
  for (const auto& option : command.options) {
    std::string head = "--" + option.name + (option.value_name.empty() ? "" : " " + option.value_name);
    width = std::max(width, head.size());
    heads.push_back(head);
  }
  for (size_t i = 0; i < command.options.size(); ++i) {
    const auto& option = command.options[i];
    out << "  " << heads[i] << std::string(width - heads[i].size() + 2, ' ') << option.help;
    if (option.required) out << " (required)";
    if (!option.default_value.empty()) out << " [default: " << option.default_value << "]";
    if (option.repeatable) out << " (repeatable)";
    if (option.multi) out << " (one or more)";
    out << "\n";
  }
  out << "  --help" << std::string(width > 4 ? width - 4 : 2, ' ') << "show this help\n";
  return out.str();
}

std::vector<Option> compute_options() {
  return {
      {"threads", "N", "CPU threads for tensor work (0 = all cores)", "0"},
  };
}

std::vector<Option> device_options(const std::string& default_dtype) {
  return {
      {"device", "DEV", "cpu, cuda, cuda:N, or auto (cuda when present)", "auto"},
      {"dtype", "T", "float32, bfloat16 or float16", default_dtype},
  };
}

void apply_compute_options(const Args& args) { set_threads(static_cast<int>(args.get_int("threads"))); }

}  // namespace kdae::cli
