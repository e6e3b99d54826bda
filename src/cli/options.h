// Declarative command-line options: each command lists its options once, and both parsing and
// `kdae <cmd> --help` are generated from that table.
#pragma once
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace kdae::cli {

struct Option {
  std::string name;           // long name without dashes: "max-new-tokens"
  std::string value_name;     // "N", "DIR"; empty for a boolean flag
  std::string help;
  std::string default_value;  // shown in --help and returned when the flag is absent; "" = none
  bool repeatable = false;    // may be given several times (e.g. --set k=v --set k2=v2)
  bool required = false;
  bool multi = false;         // takes one or more values: --experts A B C (up to the next --option)
};

class Args {
 public:
  bool has(const std::string& name) const;
  std::string get(const std::string& name) const;  // value, else the default, else UsageError
  std::optional<std::string> maybe(const std::string& name) const;
  std::vector<std::string> all(const std::string& name) const;
  long long get_int(const std::string& name) const;
  double get_double(const std::string& name) const;
  bool flag(const std::string& name) const { return has(name); }
  const std::vector<std::string>& positional() const { return positional_; }

 private:
  friend Args parse_args(const struct Command&, const std::vector<std::string>&);
  std::map<std::string, std::vector<std::string>> values_;
  std::map<std::string, std::string> defaults_;
  std::vector<std::string> positional_;
};

struct Command {
  std::string name;
  std::string summary;
  std::string description;  // free text printed under the usage line
  std::vector<Option> options;
  std::function<int(const Args&)> run;
  std::string positional_help;  // e.g. "[inspect DIR]"; empty = no positional arguments accepted
};

Args parse_args(const Command& command, const std::vector<std::string>& argv);
std::string help_text(const Command& command);

// Options shared by every command that computes (--threads); append them to a command's table.
std::vector<Option> compute_options();
void apply_compute_options(const Args& args);
// --device and --dtype, for commands that place a model; read them with common/device.h.
std::vector<Option> device_options(const std::string& default_dtype = "float32");

}  // namespace kdae::cli
