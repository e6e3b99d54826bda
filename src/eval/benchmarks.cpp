#include "eval/benchmarks.h"

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <sstream>

#include "common/error.h"

namespace kdae::eval {
namespace {

using nlohmann::json;

std::vector<std::string> string_list(const json& j, const std::string& where, const char* key) {
  if (!j.contains(key)) return {};
  if (!j[key].is_array()) fail(where, ": \"", key, "\" must be a list of strings");
  std::vector<std::string> out;
  for (const auto& x : j[key]) {
    if (!x.is_string()) fail(where, ": \"", key, "\" must be a list of strings");
    out.push_back(x.get<std::string>());
  }
  return out;
}

// FastChat's answer ids are shortuuids: 22 characters of a 57-letter alphabet.
std::string answer_id() {
  static const std::string alphabet = "23456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz";
  static std::mt19937_64 rng{std::random_device{}()};
  std::string id;
  for (int i = 0; i < 22; ++i) id += alphabet[rng() % alphabet.size()];
  return id;
}

template <typename Each>
void for_json_lines(const std::string& path, Each each) {
  std::ifstream in(path);
  if (!in) fail("cannot open ", path);
  std::string line;
  for (int64_t number = 1; std::getline(in, line); ++number) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
    const std::string where = str(path, ":", number);
    if (!j.is_object()) fail(where, ": not a JSON object");
    each(j, where);
  }
}

}  // namespace

std::vector<MtBenchQuestion> read_mt_bench_questions(const std::string& path) {
  std::vector<MtBenchQuestion> out;
  for_json_lines(path, [&](const json& j, const std::string& where) {
    if (!j.contains("question_id") || !(j["question_id"].is_number_integer() || j["question_id"].is_string()))
      fail(where, ": needs an integer or string \"question_id\"");
    MtBenchQuestion q{j["question_id"], j.value("category", std::string("general")), string_list(j, where, "turns"),
                      string_list(j, where, "reference")};
    if (q.turns.empty()) fail(where, ": \"turns\" must hold at least one question");
    out.push_back(std::move(q));
  });
  if (out.empty()) fail(path, ": no questions");
  return out;
}

double mt_bench_temperature(const std::string& category) {
  static const std::map<std::string, double> table = {
      {"writing", 0.7}, {"roleplay", 0.7}, {"extraction", 0.0}, {"math", 0.0},         {"coding", 0.0},
      {"reasoning", 0.0}, {"stem", 0.1},   {"humanities", 0.1}, {"arena-hard-200", 0.0}};
  auto it = table.find(category);
  return it == table.end() ? 0.7 : it->second;
}

bool mt_bench_needs_reference(const std::string& category) {
  return category == "math" || category == "reasoning" || category == "coding" || category == "arena-hard-200";
}

json mt_bench_answer(const json& question_id, const std::string& model_id, const std::vector<std::string>& turns) {
  const double now =
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
  return {{"question_id", question_id},
          {"answer_id", answer_id()},
          {"model_id", model_id},
          {"choices", json::array({{{"index", 0}, {"turns", turns}}})},
          {"tstamp", now}};
}

std::vector<json> read_answer_lines(const std::string& path) {
  std::vector<json> out;
  if (!std::filesystem::exists(path)) return out;
  for_json_lines(path, [&](const json& j, const std::string& where) {
    if (!j.contains("question_id")) fail(where, ": an answer line needs \"question_id\"");
    out.push_back(j);
  });
  return out;
}

json read_json_file(const std::string& path) {
  std::ifstream in(path);
  if (!in) fail("cannot open ", path);
  std::stringstream text;
  text << in.rdbuf();
  json j = json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) fail(path, ": not valid JSON");
  if (!j.is_array()) fail(path, ": expected a JSON list");
  return j;
}

std::vector<AlpacaItem> read_alpaca_eval(const std::string& path) {
  std::vector<AlpacaItem> out;
  const json j = read_json_file(path);
  for (size_t i = 0; i < j.size(); ++i) {
    if (!j[i].is_object() || !j[i].contains("instruction") || !j[i]["instruction"].is_string())
      fail(path, ": item ", i, " needs a string \"instruction\"");
    out.push_back({j[i]["instruction"].get<std::string>(), j[i].value("dataset", std::string("kdae"))});
  }
  if (out.empty()) fail(path, ": no instructions");
  return out;
}

std::vector<json> read_alpaca_outputs(const std::string& path) {
  if (!std::filesystem::exists(path)) return {};
  const json j = read_json_file(path);
  std::vector<json> out;
  for (size_t i = 0; i < j.size(); ++i) {
    if (!j[i].is_object() || !j[i].contains("instruction") || !j[i].contains("output") ||
        !j[i]["output"].is_string())
      fail(path, ": item ", i, " needs \"instruction\" and a string \"output\"");
    out.push_back(j[i]);
  }
  return out;
}

}  // namespace kdae::eval
