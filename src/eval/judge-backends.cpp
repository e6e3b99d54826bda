#include "eval/judge-backends.h"

#ifdef KDAE_HAS_HTTPLIB
#include <httplib.h>
#endif
#include <nlohmann/json.hpp>

#include <atomic>
#include <filesystem>
#include <thread>

#include "common/error.h"
#include "eval/prompt-file.h"
#include "generate/text-generator.h"

namespace kdae::eval {
namespace {

using nlohmann::json;

class LocalJudge : public JudgeBackend {
 public:
  explicit LocalJudge(const LocalJudgeOptions& o)
      : options_(o), generator_(o.model_dir, o.template_name, o.device, o.dtype) {}
  std::string name() const override { return std::filesystem::path(options_.model_dir).filename().string(); }
  std::vector<std::string> complete(const std::vector<std::vector<data::Message>>& conversations) override {
    gen::GenerateOptions greedy;
    greedy.max_new_tokens = options_.max_tokens;
    return answer_conversations(generator_, conversations, std::vector<gen::GenerateOptions>(conversations.size(), greedy),
                                options_.batch_size);
  }

 private:
  LocalJudgeOptions options_;
  gen::TextGenerator generator_;
};

#ifdef KDAE_HAS_HTTPLIB
// "http://host:port/v1" -> ("http://host:port", "/v1").
std::pair<std::string, std::string> split_url(const std::string& url) {
  const size_t scheme = url.find("://");
  if (scheme == std::string::npos) fail("--judge-url must start with http:// or https://, got '", url, "'");
  const size_t path = url.find('/', scheme + 3);
  std::string prefix = path == std::string::npos ? "" : url.substr(path);
  while (!prefix.empty() && prefix.back() == '/') prefix.pop_back();
  return {url.substr(0, path), prefix};
}

class EndpointJudge : public JudgeBackend {
 public:
  explicit EndpointJudge(const EndpointJudgeOptions& o) : options_(o) {
    std::tie(host_, prefix_) = split_url(o.base_url);
    if (o.parallel < 1) fail("the judge's parallel requests must be >= 1");
  }
  std::string name() const override { return options_.model; }

  std::vector<std::string> complete(const std::vector<std::vector<data::Message>>& conversations) override {
    std::vector<std::string> out(conversations.size());
    std::atomic<size_t> next{0};
    std::vector<std::string> errors(static_cast<size_t>(options_.parallel));
    std::vector<std::thread> workers;
    for (int64_t w = 0; w < options_.parallel; ++w)
      workers.emplace_back([&, w] {
        try {
          for (size_t i; (i = next++) < conversations.size();) out[i] = ask(conversations[i]);
        } catch (const std::exception& e) {
          errors[static_cast<size_t>(w)] = e.what();
          next = conversations.size();
        }
      });
    for (auto& t : workers) t.join();
    for (const auto& e : errors)
      if (!e.empty()) fail(e);
    return out;
  }

 private:
  std::string ask(const std::vector<data::Message>& conversation) const {
    json messages = json::array();
    for (const auto& m : conversation) messages.push_back({{"role", m.role}, {"content", m.content}});
    const std::string body =
        json{{"model", options_.model}, {"messages", messages}, {"temperature", 0}, {"max_tokens", options_.max_tokens}}
            .dump();
    httplib::Client client(host_);
    client.set_read_timeout(600, 0);
    client.set_connection_timeout(10, 0);
    httplib::Headers headers;
    if (!options_.api_key.empty()) headers.emplace("Authorization", "Bearer " + options_.api_key);
    const std::string url = prefix_ + "/chat/completions";
    std::string last_error;
    for (int attempt = 0; attempt <= options_.retries; ++attempt) {
      if (attempt) std::this_thread::sleep_for(std::chrono::seconds(1 << attempt));
      auto res = client.Post(url, headers, body, "application/json");
      if (!res) {
        last_error = str("cannot reach ", host_, url, ": ", httplib::to_string(res.error()));
        continue;
      }
      if (res->status == 429 || res->status >= 500) {
        last_error = str(host_, url, " answered ", res->status, ": ", res->body.substr(0, 300));
        continue;
      }
      if (res->status != 200) fail("the judge endpoint ", host_, url, " answered ", res->status, ": ", res->body.substr(0, 500));
      const json j = json::parse(res->body, nullptr, false);
      if (!j.is_object() || !j.contains("choices") || j["choices"].empty() ||
          !j["choices"][0].contains("message") || !j["choices"][0]["message"].contains("content"))
        fail("the judge endpoint ", host_, url, " sent no choices[0].message.content: ", res->body.substr(0, 300));
      const json& content = j["choices"][0]["message"]["content"];
      return content.is_string() ? content.get<std::string>() : std::string();
    }
    fail("the judge endpoint failed ", options_.retries + 1, " times; last: ", last_error);
  }

  EndpointJudgeOptions options_;
  std::string host_, prefix_;
};
#endif  // KDAE_HAS_HTTPLIB

}  // namespace

std::unique_ptr<JudgeBackend> local_judge(const LocalJudgeOptions& options) {
  return std::make_unique<LocalJudge>(options);
}

std::unique_ptr<JudgeBackend> endpoint_judge(const EndpointJudgeOptions& options) {
#ifdef KDAE_HAS_HTTPLIB
  return std::make_unique<EndpointJudge>(options);
#else
  fail("this kdae was built without cpp-httplib, so it has no endpoint judge: install libcpp-httplib-dev and rebuild");
#endif
}

}  // namespace kdae::eval
