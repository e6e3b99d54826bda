#include "serve/server.h"

#include "common/error.h"

#ifndef KDAE_HAS_HTTPLIB
namespace kdae::serve {
int serve(const ServeOptions&) { fail("this kdae was built without cpp-httplib: install libcpp-httplib-dev and rebuild"); }
}  // namespace kdae::serve
#else
#include <httplib.h>
#include <nlohmann/json.hpp>

#include <csignal>
#include <filesystem>
#include <iostream>
#include <random>

#include "generate/text-generator.h"
#include "serve/openai-api.h"
#include "serve/scheduler.h"

namespace kdae::serve {
namespace {

using nlohmann::json;
using namespace std::chrono_literals;

std::atomic<bool> g_stop_requested{false};
extern "C" void on_stop_signal(int) { g_stop_requested = true; }

int64_t now_seconds() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string request_id(const char* prefix) {
  static std::atomic<int64_t> counter{0};
  return str(prefix, "-", now_seconds(), "-", ++counter);
}

const char* finish_text(gen::FinishReason r) { return r == gen::FinishReason::length ? "length" : "stop"; }

// One choice of a request as its events arrive: the visible text (cut at a stop string), what has
// been streamed, and the tokens for logprobs.
struct ChoiceState {
  explicit ChoiceState(const tok::Tokenizer& tokenizer) : streamer(tokenizer) {}
  gen::TextStreamer streamer;
  std::string text;
  size_t sent = 0;
  std::vector<ReportedToken> prompt, tokens;
  int64_t completion_tokens = 0;
  std::optional<gen::FinishReason> finish;
};

class Api {
 public:
  explicit Api(const ServeOptions& o)
      : options_(o),
        name_(o.model_name.empty() ? std::filesystem::path(o.model_dir).filename().string() : o.model_name),
        generator_(o.model_dir, o.template_name, o.device, o.dtype, /*template_optional=*/true),
        scheduler_(generator_.model(), o.max_batch),
        context_(generator_.model()->config().max_position_embeddings) {}

  void routes(httplib::Server& server);

 private:
  struct Job {
    Sampling sampling;
    bool chat = false, echo = false;
    std::string prompt_text;
    int64_t prompt_tokens = 0, first_prompt_token = 0;
    std::shared_ptr<EventQueue> queue;
    std::vector<ChoiceState> choices;
    std::string id;
    int64_t created = now_seconds();
  };

  std::shared_ptr<Job> start(Sampling sampling, std::vector<int64_t> prompt, bool chat, bool want_prompt_logprobs);
  bool apply(Job& job, const Delivery& d);  // false when every choice has finished
  std::string token_text(int64_t id) const {
    return generator_.tokenizer().decode({static_cast<tok::TokenId>(id)}, /*skip_special_tokens=*/false);
  }
  json final_body(const Job& job) const;
  json stream_chunk(const Job& job, size_t choice, const std::string& delta, bool first, bool last) const;
  void respond(std::shared_ptr<Job> job, httplib::Response& res);
  void stream(std::shared_ptr<Job> job, httplib::Response& res);
  void check_model(const Sampling& s) const {
    if (!s.model.empty() && s.model != name_)
      throw ApiError(404, str("The model '", s.model, "' does not exist; this server serves '", name_, "'"), "model",
                     "model_not_found");
  }

  ServeOptions options_;
  std::string name_;
  gen::TextGenerator generator_;
  Scheduler scheduler_;
  int64_t context_;
  int64_t created_ = now_seconds();
};

std::shared_ptr<Api::Job> Api::start(Sampling s, std::vector<int64_t> prompt, bool chat, bool want_prompt_logprobs) {
  auto job = std::make_shared<Job>();
  const auto length = static_cast<int64_t>(prompt.size());
  const int64_t room = context_ - length;
  if (room < 1 || (s.max_tokens && *s.max_tokens > room))
    throw ApiError(400,
                   str("This model's maximum context length is ", context_, " tokens; the prompt has ", length,
                       " and max_tokens asks for ", s.max_tokens.value_or(1)),
                   "messages", "context_length_exceeded");
  const int64_t max_tokens = s.max_tokens.value_or(chat ? std::min(options_.default_chat_tokens, room) : 16);
  const uint64_t seed = s.seed.value_or(std::random_device{}());
  job->queue = std::make_shared<EventQueue>(!s.stream && s.stop.empty());
  job->chat = chat;
  job->prompt_tokens = length;
  job->first_prompt_token = prompt.front();
  job->id = request_id(chat ? "chatcmpl" : "cmpl");
  for (int64_t i = 0; i < s.n; ++i) {
    job->choices.emplace_back(generator_.tokenizer());
    gen::SequenceRequest r;
    r.prompt = prompt;
    r.options.max_new_tokens = max_tokens;
    r.options.temperature = s.temperature;
    r.options.top_p = s.top_p;
    r.options.seed = seed + static_cast<uint64_t>(i);
    r.options.stop_ids = generator_.stop_ids(chat);
    r.logprobs = s.logprobs;
    r.top_logprobs = s.top_logprobs;
    r.prompt_logprobs = want_prompt_logprobs;
    scheduler_.submit(std::move(r), job->queue, i);
  }
  job->sampling = std::move(s);
  return job;
}

bool Api::apply(Job& job, const Delivery& d) {
  if (d.failed) throw ApiError(500, "the model failed while decoding this request", "", "", "server_error");
  ChoiceState& c = job.choices[static_cast<size_t>(d.choice)];
  const gen::SequenceEvent& e = d.event;
  for (const auto& t : e.prompt) {
    ReportedToken r{token_text(t.token), t.logprob, {}, 0};
    for (const auto& [id, lp] : t.top) r.top.emplace_back(token_text(id), lp);
    c.prompt.push_back(std::move(r));
  }
  if (e.token && !c.finish) {
    c.streamer.add(e.token->token);
    ++c.completion_tokens;
    ReportedToken r{token_text(e.token->token), e.token->logprob, {}, 0};
    for (const auto& [id, lp] : e.token->top) r.top.emplace_back(token_text(id), lp);
    c.tokens.push_back(std::move(r));
    c.text = c.streamer.text();
    if (const size_t at = find_stop(c.text, job.sampling.stop); at != std::string::npos) {
      c.text.resize(at);
      c.finish = gen::FinishReason::stop;
      job.queue->cancel(d.choice);
    }
  }
  if (e.finished != gen::FinishReason::none && !c.finish) {
    c.text = c.streamer.finish();
    if (const size_t at = find_stop(c.text, job.sampling.stop); at != std::string::npos) c.text.resize(at);
    c.finish = e.finished;
  }
  for (const auto& choice : job.choices)
    if (!choice.finish) return true;
  return false;
}

json Api::final_body(const Job& job) const {
  json choices = json::array();
  int64_t completion_tokens = 0;
  for (size_t i = 0; i < job.choices.size(); ++i) {
    const ChoiceState& c = job.choices[i];
    completion_tokens += c.completion_tokens;
    const std::string reason = finish_text(c.finish.value_or(gen::FinishReason::stop));
    if (job.chat) {
      choices.push_back({{"index", i},
                         {"message", {{"role", "assistant"}, {"content", c.text}}},
                         {"logprobs", job.sampling.logprobs ? chat_logprobs(c.tokens) : json(nullptr)},
                         {"finish_reason", reason}});
      continue;
    }
    std::vector<ReportedToken> reported;
    if (job.echo) {  // the first prompt token: nothing predicts it
      reported.push_back({token_text(job.first_prompt_token), std::nullopt, {}, 0});
      reported.insert(reported.end(), c.prompt.begin(), c.prompt.end());
    }
    reported.insert(reported.end(), c.tokens.begin(), c.tokens.end());
    int64_t offset = 0;
    for (auto& t : reported) {
      t.text_offset = offset;
      offset += static_cast<int64_t>(t.text.size());
    }
    choices.push_back({{"index", i},
                       {"text", (job.echo ? job.prompt_text : "") + c.text},
                       {"logprobs", job.sampling.logprobs ? completion_logprobs(reported) : json(nullptr)},
                       {"finish_reason", reason}});
  }
  return {{"id", job.id},
          {"object", job.chat ? "chat.completion" : "text_completion"},
          {"created", job.created},
          {"model", name_},
          {"choices", choices},
          {"usage",
           {{"prompt_tokens", job.prompt_tokens},
            {"completion_tokens", completion_tokens},
            {"total_tokens", job.prompt_tokens + completion_tokens}}}};
}

json Api::stream_chunk(const Job& job, size_t choice, const std::string& delta, bool first, bool last) const {
  const ChoiceState& c = job.choices[choice];
  json reason = last ? json(finish_text(c.finish.value_or(gen::FinishReason::stop))) : json(nullptr);
  json body = {{"id", job.id}, {"created", job.created}, {"model", name_}};
  if (job.chat) {
    json d = json::object();
    if (first) d["role"] = "assistant";
    if (!delta.empty() || !last) d["content"] = delta;
    body["object"] = "chat.completion.chunk";
    body["choices"] = json::array({{{"index", choice}, {"delta", d}, {"logprobs", nullptr}, {"finish_reason", reason}}});
  } else {
    body["object"] = "text_completion";
    body["choices"] = json::array({{{"index", choice}, {"text", delta}, {"logprobs", nullptr}, {"finish_reason", reason}}});
  }
  return body;
}

// Waits for every choice, writing a space now and then: JSON allows leading whitespace, and a
// write that fails tells that the client went away, which cancels the request's decoding.
void Api::respond(std::shared_ptr<Job> job, httplib::Response& res) {
  res.set_chunked_content_provider("application/json", [this, job](size_t, httplib::DataSink& sink) {
    try {
      for (;;) {
        auto d = job->queue->pop(500ms);
        if (!d) {
          if (!sink.write(" ", 1)) {
            job->queue->cancel();
            return false;
          }
          continue;
        }
        if (!apply(*job, *d)) break;
      }
      const std::string body = final_body(*job).dump();
      sink.write(body.data(), body.size());
    } catch (const ApiError& e) {
      const std::string body = error_body(e).dump();
      sink.write(body.data(), body.size());
    }
    sink.done();
    return true;
  });
}

// Server-sent events: one chunk per piece of new text (held back while it may be the start of a
// stop string), a last chunk with the finish reason, then [DONE].
void Api::stream(std::shared_ptr<Job> job, httplib::Response& res) {
  res.set_header("Cache-Control", "no-cache");
  res.set_chunked_content_provider("text/event-stream", [this, job](size_t, httplib::DataSink& sink) {
    auto send = [&](const json& j) {
      const std::string line = "data: " + j.dump() + "\n\n";
      return sink.write(line.data(), line.size());
    };
    std::vector<bool> started(job->choices.size(), false), ended(job->choices.size(), false);
    bool open = true;
    try {
      while (open) {
        auto d = job->queue->pop(500ms);
        if (!d) {
          if (!sink.write(": keep-alive\n\n", 14)) break;
          continue;
        }
        open = apply(*job, *d);
        for (size_t i = 0; i < job->choices.size(); ++i) {
          ChoiceState& c = job->choices[i];
          if (ended[i]) continue;
          const size_t ready = c.finish ? c.text.size() : sendable_length(c.text, job->sampling.stop);
          const bool last = c.finish.has_value();
          if (ready > c.sent || !started[i] || last) {
            const std::string delta = ready > c.sent ? c.text.substr(c.sent, ready - c.sent) : "";
            if (!send(stream_chunk(*job, i, delta, !started[i], last))) {
              open = false;
              break;
            }
            c.sent = std::max(c.sent, ready);
            started[i] = true;
            ended[i] = last;
          }
        }
      }
      if (std::all_of(ended.begin(), ended.end(), [](bool e) { return e; })) {
        sink.write("data: [DONE]\n\n", 14);
        sink.done();
        return true;
      }
    } catch (const ApiError& e) {
      send(error_body(e));
    }
    job->queue->cancel();
    return false;
  });
}

void Api::routes(httplib::Server& server) {
  auto json_reply = [](httplib::Response& res, int status, const json& body) {
    res.status = status;
    res.set_content(body.dump(), "application/json");
  };
  auto guarded = [json_reply](auto handler) {
    return [handler, json_reply](const httplib::Request& req, httplib::Response& res) {
      try {
        handler(req, res);
      } catch (const ApiError& e) {
        json_reply(res, e.status, error_body(e));
      } catch (const std::exception& e) {
        json_reply(res, 400, error_body(ApiError(400, e.what())));
      }
    };
  };
  server.Get("/health", [this, json_reply](const httplib::Request&, httplib::Response& res) {
    const SchedulerStats s = scheduler_.stats();
    json_reply(res, 200,
               {{"status", "ok"}, {"model", name_}, {"sequences", s.sequences}, {"running", s.running},
                {"cancelled", s.cancelled}, {"steps", s.steps}, {"prefills", s.prefills}, {"largest_batch", s.largest_batch},
                {"tokens", s.tokens}});
  });
  server.Get("/v1/models", [this, json_reply](const httplib::Request&, httplib::Response& res) {
    json_reply(res, 200,
               {{"object", "list"},
                {"data", json::array({{{"id", name_}, {"object", "model"}, {"created", created_}, {"owned_by", "kdae"}}})}});
  });
  server.Post("/v1/chat/completions", guarded([this](const httplib::Request& req, httplib::Response& res) {
    ChatRequest r = parse_chat_request(req.body);
    check_model(r.sampling);
    if (!generator_.has_chat_template())
      throw ApiError(400, "this model has no chat template kdae recognises; restart kdae serve with --template NAME");
    const bool streaming = r.sampling.stream;
    auto job = start(std::move(r.sampling), generator_.conversation_ids(r.messages), true, false);
    streaming ? stream(job, res) : respond(job, res);
  }));
  server.Post("/v1/completions", guarded([this](const httplib::Request& req, httplib::Response& res) {
    CompletionRequest r = parse_completion_request(req.body);
    check_model(r.sampling);
    const bool streaming = r.sampling.stream, prompt_logprobs = r.echo && r.sampling.logprobs;
    if (streaming && r.echo) throw ApiError(400, "'echo' is not supported with 'stream'", "echo");
    auto job = start(std::move(r.sampling), generator_.text_ids(r.prompt), false, prompt_logprobs);
    job->echo = r.echo;
    job->prompt_text = r.prompt;
    streaming ? stream(job, res) : respond(job, res);
  }));
  server.set_error_handler([json_reply](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    if (res.status == 404) json_reply(res, 404, error_body(ApiError(404, str("no route ", req.method, " ", req.path))));
  });
  if (!options_.api_key.empty())
    server.set_pre_routing_handler([this, json_reply](const httplib::Request& req, httplib::Response& res) {
      if (req.path == "/health") return httplib::Server::HandlerResponse::Unhandled;
      if (req.get_header_value("Authorization") == "Bearer " + options_.api_key)
        return httplib::Server::HandlerResponse::Unhandled;
      json_reply(res, 401,
                 error_body(ApiError(401, "Incorrect or missing API key (Authorization: Bearer KEY)", "",
                                     "invalid_api_key")));
      return httplib::Server::HandlerResponse::Handled;
    });
}

}  // namespace

int serve(const ServeOptions& options) {
  Api api(options);
  httplib::Server server;
  // Every client waiting on a reply holds a thread; 64 lets many share the batch.
  server.new_task_queue = [] { return new httplib::ThreadPool(64); };
  server.set_payload_max_length(64 << 20);
  api.routes(server);
  int port = options.port;
  if (port == 0) port = server.bind_to_any_port(options.host);
  else if (!server.bind_to_port(options.host, port)) port = -1;
  if (port < 0) fail("cannot listen on ", options.host, ":", options.port, " (in use, or not an address here)");
  std::signal(SIGINT, on_stop_signal);
  std::signal(SIGTERM, on_stop_signal);
  std::thread watcher([&] {
    while (!g_stop_requested) std::this_thread::sleep_for(100ms);
    server.stop();
  });
  std::cerr << "kdae serve: listening on http://" << options.host << ":" << port << " (model '"
            << (options.model_name.empty() ? std::filesystem::path(options.model_dir).filename().string()
                                           : options.model_name)
            << "')" << std::endl;
  server.listen_after_bind();
  g_stop_requested = true;
  watcher.join();
  return 0;
}

}  // namespace kdae::serve
#endif  // KDAE_HAS_HTTPLIB
