// SPDX-License-Identifier: MIT
// c_api.cc - porcupine_client.h implemented over client::Client. Every
// entry point catches everything: no exception crosses the C ABI.
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>
#include <streambuf>
#include <string>
#include <vector>

#include <google/protobuf/arena.h>

#include "client/client.h"
#include "client/porcupine_client.h"
#include "core/config.h"

namespace pb = porcupine::agentpb;

struct porcupine_client {
  porcupine::client::Client client;
  std::string error;
  porcupine_client(const char* path, int timeout) : client(path, timeout) {}
};

namespace {

int fail(porcupine_client* c, int code, const std::string& why) {
  c->error = why;
  return code;
}

// Runs a request; on success leaves the response in `out`.
int call(porcupine_client* c, pb::Request& req, pb::Response& out) {
  if (!c->client.call_into(req, out)) return fail(c, PORCUPINE_UNREACHABLE, c->client.error());
  if (out.code() != pb::OK)
    return fail(c, static_cast<int>(out.code()),
                std::string(porcupine::client::code_name(out.code())) + (out.detail().empty() ? "" : ": " + out.detail()));
  c->error.clear();
  return PORCUPINE_OK;
}

void to_ref(const pb::MessageRef& in, porcupine_msgref& out) {
  out.origin = in.origin();
  out.seq = in.seq();
  out.nreplicas = 0;
  for (auto r : in.replicas())
    if (out.nreplicas < PORCUPINE_MAX_REPLICAS) out.replicas[out.nreplicas++] = r;
}

void from_ref(const porcupine_msgref& in, const char* user, const char* folder, pb::MessageRef* out) {
  out->set_origin(in.origin);
  out->set_seq(in.seq);
  for (uint32_t i = 0; i < in.nreplicas && i < PORCUPINE_MAX_REPLICAS; ++i) out->add_replicas(in.replicas[i]);
  out->set_user(user ? user : "");
  out->set_folder(folder && *folder ? folder : "INBOX");
}

// A std::streambuf over the caller's read function.
class ReadBuf : public std::streambuf {
 public:
  ReadBuf(porcupine_read_fn fn, void* ctx) : fn_(fn), ctx_(ctx) {}
  bool failed() const { return failed_; }

 protected:
  int_type underflow() override {
    if (gptr() < egptr()) return traits_type::to_int_type(*gptr());
    ssize_t n = fn_(ctx_, buf_, sizeof buf_);
    if (n < 0) failed_ = true;
    if (n <= 0) return traits_type::eof();
    setg(buf_, buf_, buf_ + n);
    return traits_type::to_int_type(*gptr());
  }

 private:
  porcupine_read_fn fn_;
  void* ctx_;
  char buf_[64 * 1024];
  bool failed_ = false;
};

template <class F>
int guarded(porcupine_client* c, F&& f) {
  if (!c) return PORCUPINE_BAD_REQUEST;
  try {
    return f();
  } catch (const std::bad_alloc&) {
    return fail(c, PORCUPINE_INTERNAL, "out of memory");
  } catch (const std::exception& e) {
    return fail(c, PORCUPINE_INTERNAL, e.what());
  } catch (...) {
    return fail(c, PORCUPINE_INTERNAL, "unexpected error");
  }
}

// Sends a batch of requests (pipelined) and hands each its answer's code;
// OK when every request got an answer (c->error names the first refusal).
template <class SetResult>
int call_batch(porcupine_client* c, std::vector<pb::Request>& reqs, SetResult set_result) {
  auto answers = c->client.call_many(reqs);
  int code = PORCUPINE_OK;
  std::string first_error;
  for (size_t i = 0; i < reqs.size(); ++i) {
    if (!answers[i]) {
      set_result(i, PORCUPINE_UNREACHABLE);
      code = PORCUPINE_UNREACHABLE;
      continue;
    }
    set_result(i, static_cast<int>(answers[i]->code()));
    if (answers[i]->code() != pb::OK && first_error.empty())
      first_error = std::string(porcupine::client::code_name(answers[i]->code())) +
                    (answers[i]->detail().empty() ? "" : ": " + answers[i]->detail());
  }
  if (code != PORCUPINE_OK) return fail(c, code, c->client.error());
  c->error = first_error;
  return PORCUPINE_OK;
}

}  // namespace

extern "C" {

porcupine_client* porcupine_open(const char* socket_path, int timeout_ms) {
  try {
    return new porcupine_client(socket_path ? socket_path : "/run/porcupine/agent.sock",
                                timeout_ms > 0 ? timeout_ms : 10000);
  } catch (...) {
    return nullptr;
  }
}

void porcupine_close(porcupine_client* c) { delete c; }

const char* porcupine_error(const porcupine_client* c) { return c ? c->error.c_str() : "no client"; }

int porcupine_user_lookup(porcupine_client* c, const char* user, porcupine_user* out) {
  return guarded(c, [&]() -> int {
    if (!user || !out) return fail(c, PORCUPINE_BAD_REQUEST, "user and out are required");
    pb::Request req;
    req.mutable_user_get()->set_user(user);
    pb::Response r;
    int code = call(c, req, r);
    if (code != PORCUPINE_OK) return code;
    std::memset(out, 0, sizeof *out);
    std::strncpy(out->user, r.user().user().c_str(), sizeof out->user - 1);
    out->quota_bytes = r.user().quota_bytes();
    out->used_bytes = r.user().used_bytes();
    out->enabled = r.user().enabled() ? 1 : 0;
    return PORCUPINE_OK;
  });
}

int porcupine_user_auth(porcupine_client* c, const char* user, const char* password) {
  return guarded(c, [&]() -> int {
    if (!user || !password) return fail(c, PORCUPINE_BAD_REQUEST, "user and password are required");
    pb::Request req;
    req.mutable_user_auth()->set_user(user);
    req.mutable_user_auth()->set_password(password);
    pb::Response r;
    return call(c, req, r);
  });
}

int porcupine_deliver_size_limit(porcupine_client* c, uint64_t* limit_r) {
  return guarded(c, [&]() -> int {
    if (!limit_r) return fail(c, PORCUPINE_BAD_REQUEST, "limit_r is required");
    pb::Request req;
    req.mutable_status();
    pb::Response r;
    int code = call(c, req, r);
    if (code == PORCUPINE_OK) *limit_r = r.status().deliver_size_limit();
    return code;
  });
}

int porcupine_deliver(porcupine_client* c, const char* user, const char* folder, porcupine_read_fn read,
                      void* context, porcupine_delivered* out) {
  return porcupine_deliver_with(c, user, folder, nullptr, read, context, out);
}

int porcupine_deliver_with(porcupine_client* c, const char* user, const char* folder,
                           const porcupine_deliver_options* options, porcupine_read_fn read, void* context,
                           porcupine_delivered* out) {
  return porcupine_deliver_keyed(c, user, folder, options, nullptr, 0, read, context, out);
}

int porcupine_deliver_keyed(porcupine_client* c, const char* user, const char* folder,
                            const porcupine_deliver_options* options, const void* key, size_t key_len,
                            porcupine_read_fn read, void* context, porcupine_delivered* out) {
  return guarded(c, [&]() -> int {
    if (!user || !read) return fail(c, PORCUPINE_BAD_REQUEST, "user and read are required");
    pb::DeliverBegin begin;
    if (key || key_len > 0) {
      if (!key || key_len == 0 || key_len > 64) return fail(c, PORCUPINE_BAD_REQUEST, "a key is 1 to 64 bytes");
      begin.set_delivery_key(key, key_len);
    }
    if (options) {
      if (options->nkeywords > 0 && !options->keywords) return fail(c, PORCUPINE_BAD_REQUEST, "keywords is null");
      begin.set_internal_date_ms(options->internal_date_ms);
      begin.set_flags(options->flags);
      for (size_t k = 0; k < options->nkeywords; ++k) {
        if (!options->keywords[k]) return fail(c, PORCUPINE_BAD_REQUEST, "a keyword is null");
        begin.add_keywords(options->keywords[k]);
      }
      if (options->meta && options->meta_len > 0 && options->meta_len <= PORCUPINE_MAX_META)
        begin.set_meta(options->meta, options->meta_len);
    }
    ReadBuf buf(read, context);
    std::istream in(&buf);
    auto r = c->client.deliver({user}, folder && *folder ? folder : "INBOX", in, 256 * 1024, begin);
    if (buf.failed()) return fail(c, PORCUPINE_BAD_REQUEST, "reading the message failed");
    if (!r) return fail(c, PORCUPINE_UNREACHABLE, c->client.error());
    if (r->delivered_size() != 1)
      return fail(c, r->code() == pb::OK ? PORCUPINE_INTERNAL : static_cast<int>(r->code()), r->detail());
    const auto& d = r->delivered(0);
    if (d.code() != pb::OK)
      return fail(c, static_cast<int>(d.code()), std::string(porcupine::client::code_name(d.code())) + ": " + d.detail());
    if (out) {
      to_ref(d.message().ref(), out->ref);
      out->uid = d.message().uid();
      out->uidvalidity = d.uidvalidity();
    }
    c->error.clear();
    return PORCUPINE_OK;
  });
}

int porcupine_folder_list(porcupine_client* c, const char* user, const char* folder, porcupine_folder* out) {
  return porcupine_folder_list_meta(c, user, folder, 0, out);
}

int porcupine_folder_list_meta(porcupine_client* c, const char* user, const char* folder, uint32_t meta_from_uid,
                               porcupine_folder* out) {
  return guarded(c, [&]() -> int {
    if (!user || !out) return fail(c, PORCUPINE_BAD_REQUEST, "user and out are required");
    std::memset(out, 0, sizeof *out);
    pb::Request req;
    req.mutable_folder_list()->set_user(user);
    req.mutable_folder_list()->set_folder(folder && *folder ? folder : "INBOX");
    req.mutable_folder_list()->set_meta_from_uid(meta_from_uid);
    google::protobuf::Arena arena;  // thousands of messages, freed at once
    pb::Response& r = *google::protobuf::Arena::CreateMessage<pb::Response>(&arena);
    int code = call(c, req, r);
    if (code != PORCUPINE_OK) return code;
    out->uidvalidity = r.uidvalidity();
    out->next_uid = r.next_uid();
    out->digest = r.folder_digest();
    if (r.reachable_nodes_size() > 0) {
      out->reachable = static_cast<uint32_t*>(std::calloc(static_cast<size_t>(r.reachable_nodes_size()), sizeof(uint32_t)));
      if (!out->reachable) return fail(c, PORCUPINE_INTERNAL, "out of memory");
      out->nreachable = static_cast<size_t>(r.reachable_nodes_size());
      std::copy(r.reachable_nodes().begin(), r.reachable_nodes().end(), out->reachable);
      std::sort(out->reachable, out->reachable + out->nreachable);
    }
    out->count = static_cast<size_t>(r.messages_size());
    if (out->count > 0) {
      out->messages = static_cast<porcupine_message*>(std::calloc(out->count, sizeof(porcupine_message)));
      if (!out->messages) {
        out->count = 0;
        return fail(c, PORCUPINE_INTERNAL, "out of memory");
      }
    }
    for (size_t i = 0; i < out->count; ++i) {
      const auto& m = r.messages(static_cast<int>(i));
      to_ref(m.ref(), out->messages[i].ref);
      out->messages[i].uid = m.uid();
      out->messages[i].flags = m.flags();
      out->messages[i].size = m.size();
      out->messages[i].internal_date_ms = m.internal_date_ms();
      out->messages[i].vsize = m.vsize();
      out->messages[i].hdr_size = m.hdr_size();
      if (!m.meta().empty()) {
        out->messages[i].meta = static_cast<char*>(std::malloc(m.meta().size()));
        if (!out->messages[i].meta) {
          porcupine_folder_free(out);
          return fail(c, PORCUPINE_INTERNAL, "out of memory");
        }
        std::memcpy(out->messages[i].meta, m.meta().data(), m.meta().size());
        out->messages[i].meta_len = m.meta().size();
      }
      if (m.keywords_size() > 0) {
        auto n = static_cast<size_t>(m.keywords_size());
        out->messages[i].keywords = static_cast<char**>(std::calloc(n, sizeof(char*)));
        if (!out->messages[i].keywords) {
          porcupine_folder_free(out);
          return fail(c, PORCUPINE_INTERNAL, "out of memory");
        }
        out->messages[i].nkeywords = n;
        for (size_t k = 0; k < n; ++k) {
          out->messages[i].keywords[k] = strdup(m.keywords(static_cast<int>(k)).c_str());
          if (!out->messages[i].keywords[k]) {
            porcupine_folder_free(out);
            return fail(c, PORCUPINE_INTERNAL, "out of memory");
          }
        }
      }
    }
    return PORCUPINE_OK;
  });
}

int porcupine_folder_digest(porcupine_client* c, const char* user, const char* folder, uint64_t* digest) {
  return guarded(c, [&]() -> int {
    if (!user || !digest) return fail(c, PORCUPINE_BAD_REQUEST, "user and digest are required");
    pb::Request req;
    req.mutable_folder_list()->set_user(user);
    req.mutable_folder_list()->set_folder(folder && *folder ? folder : "INBOX");
    req.mutable_folder_list()->set_digest_only(true);
    pb::Response r;
    int code = call(c, req, r);
    if (code != PORCUPINE_OK) return code;
    *digest = r.folder_digest();
    return PORCUPINE_OK;
  });
}

int porcupine_folder_covers(const porcupine_folder* f, const porcupine_msgref* ref) {
  if (!f || !ref || !f->reachable) return 0;
  for (uint32_t i = 0; i < ref->nreplicas && i < PORCUPINE_MAX_REPLICAS; ++i)
    if (std::binary_search(f->reachable, f->reachable + f->nreachable, ref->replicas[i])) return 1;
  return 0;
}

void porcupine_folder_free(porcupine_folder* f) {
  if (!f) return;
  std::free(f->reachable);
  for (size_t i = 0; f->messages && i < f->count; ++i) {
    for (size_t k = 0; k < f->messages[i].nkeywords; ++k) std::free(f->messages[i].keywords[k]);
    std::free(f->messages[i].keywords);
    std::free(f->messages[i].meta);
  }
  std::free(f->messages);
  f->messages = nullptr;
  f->count = 0;
  f->reachable = nullptr;
  f->nreachable = 0;
}

int porcupine_fetch(porcupine_client* c, const char* user, const char* folder, const porcupine_msgref* ref,
                    char** body, size_t* len) {
  return guarded(c, [&]() -> int {
    if (!ref || !body || !len) return fail(c, PORCUPINE_BAD_REQUEST, "ref, body and len are required");
    *body = nullptr;
    *len = 0;
    pb::Request req;
    from_ref(*ref, user, folder, req.mutable_fetch()->mutable_ref());
    pb::Response r;
    int code = call(c, req, r);
    if (code != PORCUPINE_OK) return code;
    *body = static_cast<char*>(std::malloc(r.body().size() + 1));
    if (!*body) return fail(c, PORCUPINE_INTERNAL, "out of memory");
    std::memcpy(*body, r.body().data(), r.body().size());
    (*body)[r.body().size()] = '\0';
    *len = r.body().size();
    return PORCUPINE_OK;
  });
}

int porcupine_fetch_many(porcupine_client* c, const char* user, const char* folder, porcupine_fetched* items,
                         size_t n) {
  return guarded(c, [&]() -> int {
    if (n > 0 && !items) return fail(c, PORCUPINE_BAD_REQUEST, "items are required");
    std::vector<pb::Request> reqs(n);
    for (size_t i = 0; i < n; ++i) {
      items[i].body = nullptr;
      items[i].len = 0;
      items[i].result = PORCUPINE_UNREACHABLE;
      from_ref(items[i].ref, user, folder, reqs[i].mutable_fetch()->mutable_ref());
    }
    auto answers = c->client.call_many(reqs, 8);
    int code = PORCUPINE_OK;
    for (size_t i = 0; i < n; ++i) {
      if (!answers[i]) {
        code = PORCUPINE_UNREACHABLE;
        continue;
      }
      items[i].result = static_cast<int>(answers[i]->code());
      if (answers[i]->code() != pb::OK) {
        c->error = std::string(porcupine::client::code_name(answers[i]->code())) +
                   (answers[i]->detail().empty() ? "" : ": " + answers[i]->detail());
        continue;
      }
      const std::string& b = answers[i]->body();
      items[i].body = static_cast<char*>(std::malloc(b.size() + 1));
      if (!items[i].body) {
        items[i].result = PORCUPINE_INTERNAL;
        continue;
      }
      std::memcpy(items[i].body, b.data(), b.size());
      items[i].body[b.size()] = '\0';
      items[i].len = b.size();
    }
    if (code != PORCUPINE_OK) return fail(c, code, c->client.error());
    return PORCUPINE_OK;
  });
}

void porcupine_body_free(char* body) { std::free(body); }

// porcupine_open_many and porcupine_open_headers: Opens of `part`, in
// batches of what one Open takes.
static int open_parts(porcupine_client* c, const char* user, const char* folder, pb::Open::Part part,
               porcupine_opened* items, size_t n) {
  // The most one Open takes (the agent's limit).
  constexpr size_t kBatch = 128;
  return guarded(c, [&]() -> int {
    if (!user || (n > 0 && !items)) return fail(c, PORCUPINE_BAD_REQUEST, "user and items are required");
    for (size_t i = 0; i < n; ++i) {
      items[i].result = PORCUPINE_UNREACHABLE;
      items[i].size = 0;
      items[i].fd = -1;
      items[i].part = PORCUPINE_PART_WHOLE;
    }
    std::string first_error;
    for (size_t start = 0; start < n; start += kBatch) {
      const size_t end = std::min(n, start + kBatch);
      pb::Request req;
      auto* o = req.mutable_open();
      o->set_pass_fds(true);
      o->set_part(part);
      std::uint64_t bytes = 0;
      for (size_t i = start; i < end; ++i) {
        from_ref(items[i].ref, user, folder, o->add_refs());
        o->add_sizes(items[i].size_hint);
        bytes += items[i].size_hint;
      }
      std::vector<int> fds;
      auto r = c->client.call_fds(req, porcupine::transfer_time(porcupine::CoreConfig{}, bytes), fds);
      if (!r) return fail(c, PORCUPINE_UNREACHABLE, c->client.error());
      if (r->code() != pb::OK || r->opened_size() != static_cast<int>(end - start)) {
        for (int fd : fds) ::close(fd);
        const int code = r->code() != pb::OK ? static_cast<int>(r->code()) : PORCUPINE_INTERNAL;
        for (size_t i = start; i < n; ++i) items[i].result = code;
        return fail(c, code,
                    std::string(porcupine::client::code_name(r->code())) + (r->detail().empty() ? "" : ": " + r->detail()));
      }
      std::vector<bool> taken(fds.size(), false);
      for (size_t i = start; i < end; ++i) {
        const auto& op = r->opened(static_cast<int>(i - start));
        items[i].result = static_cast<int>(op.code());
        if (op.code() != pb::OK) {
          if (first_error.empty())
            first_error = std::string(porcupine::client::code_name(op.code())) +
                          (op.detail().empty() ? "" : ": " + op.detail());
          continue;
        }
        if (op.fd_index() >= fds.size() || taken[op.fd_index()]) {
          items[i].result = PORCUPINE_INTERNAL;
          if (first_error.empty()) first_error = "an answer named no file descriptor of its frame";
          continue;
        }
        taken[op.fd_index()] = true;
        items[i].fd = fds[op.fd_index()];
        items[i].size = op.size();
        items[i].part = !op.header_only() ? PORCUPINE_PART_WHOLE
                        : op.header_cut() ? PORCUPINE_PART_HEADER_CUT
                                          : PORCUPINE_PART_HEADER;
      }
      for (size_t k = 0; k < fds.size(); ++k)
        if (!taken[k]) ::close(fds[k]);
    }
    c->error = first_error;
    return PORCUPINE_OK;
  });
}

int porcupine_open_many(porcupine_client* c, const char* user, const char* folder, porcupine_opened* items,
                        size_t n) {
  return open_parts(c, user, folder, pb::Open::WHOLE, items, n);
}

int porcupine_open_headers(porcupine_client* c, const char* user, const char* folder, porcupine_opened* items,
                           size_t n) {
  return open_parts(c, user, folder, pb::Open::HEADER, items, n);
}

int porcupine_set_flags(porcupine_client* c, const char* user, const char* folder, const porcupine_msgref* ref,
                        uint32_t flags) {
  return porcupine_set_flags_keywords(c, user, folder, ref, flags, nullptr, 0);
}

int porcupine_set_flags_keywords(porcupine_client* c, const char* user, const char* folder,
                                 const porcupine_msgref* ref, uint32_t flags, const char* const* keywords,
                                 size_t nkeywords) {
  return guarded(c, [&]() -> int {
    if (!ref || !user) return fail(c, PORCUPINE_BAD_REQUEST, "user and ref are required");
    if (nkeywords > 0 && !keywords) return fail(c, PORCUPINE_BAD_REQUEST, "keywords is null");
    pb::Request req;
    from_ref(*ref, user, folder, req.mutable_set_flags()->mutable_ref());
    req.mutable_set_flags()->set_flags(flags);
    for (size_t k = 0; k < nkeywords; ++k) {
      if (!keywords[k]) return fail(c, PORCUPINE_BAD_REQUEST, "a keyword is null");
      req.mutable_set_flags()->add_keywords(keywords[k]);
    }
    pb::Response r;
    return call(c, req, r);
  });
}

int porcupine_set_flags_many(porcupine_client* c, const char* user, const char* folder,
                             porcupine_flag_change* changes, size_t n) {
  return guarded(c, [&]() -> int {
    if (!user || (n > 0 && !changes)) return fail(c, PORCUPINE_BAD_REQUEST, "user and changes are required");
    std::vector<pb::Request> reqs(n);
    for (size_t i = 0; i < n; ++i) {
      const porcupine_flag_change& ch = changes[i];
      if (ch.nkeywords > 0 && !ch.keywords) return fail(c, PORCUPINE_BAD_REQUEST, "keywords is null");
      auto* sf = reqs[i].mutable_set_flags();
      from_ref(ch.ref, user, folder, sf->mutable_ref());
      sf->set_flags(ch.flags);
      for (size_t k = 0; k < ch.nkeywords; ++k) {
        if (!ch.keywords[k]) return fail(c, PORCUPINE_BAD_REQUEST, "a keyword is null");
        sf->add_keywords(ch.keywords[k]);
      }
    }
    return call_batch(c, reqs, [changes](size_t i, int result) { changes[i].result = result; });
  });
}

int porcupine_change_flags_many(porcupine_client* c, const char* user, const char* folder,
                                porcupine_flag_delta* deltas, size_t n) {
  return guarded(c, [&]() -> int {
    if (!user || (n > 0 && !deltas)) return fail(c, PORCUPINE_BAD_REQUEST, "user and deltas are required");
    std::vector<pb::Request> reqs(n);
    for (size_t i = 0; i < n; ++i) {
      const porcupine_flag_delta& d = deltas[i];
      if ((d.nadd_keywords > 0 && !d.add_keywords) || (d.nremove_keywords > 0 && !d.remove_keywords))
        return fail(c, PORCUPINE_BAD_REQUEST, "keywords is null");
      auto* cf = reqs[i].mutable_change_flags();
      from_ref(d.ref, user, folder, cf->mutable_ref());
      cf->set_add_flags(d.add_flags);
      cf->set_remove_flags(d.remove_flags);
      for (size_t k = 0; k < d.nadd_keywords; ++k) {
        if (!d.add_keywords[k]) return fail(c, PORCUPINE_BAD_REQUEST, "a keyword is null");
        cf->add_add_keywords(d.add_keywords[k]);
      }
      for (size_t k = 0; k < d.nremove_keywords; ++k) {
        if (!d.remove_keywords[k]) return fail(c, PORCUPINE_BAD_REQUEST, "a keyword is null");
        cf->add_remove_keywords(d.remove_keywords[k]);
      }
    }
    return call_batch(c, reqs, [deltas](size_t i, int result) { deltas[i].result = result; });
  });
}

int porcupine_renumber(porcupine_client* c, const char* user, const char* folder, const porcupine_msgref* ref,
                       uint32_t uidvalidity, uint32_t uid, uint32_t above) {
  return guarded(c, [&]() -> int {
    if (!ref || !user) return fail(c, PORCUPINE_BAD_REQUEST, "user and ref are required");
    pb::Request req;
    auto* r = req.mutable_renumber();
    from_ref(*ref, user, folder, r->mutable_ref());
    r->set_uidvalidity(uidvalidity);
    r->set_uid(uid);
    r->set_above(above);
    pb::Response resp;
    return call(c, req, resp);
  });
}

int porcupine_expunge(porcupine_client* c, const char* user, const char* folder, const porcupine_msgref* ref) {
  return guarded(c, [&]() -> int {
    if (!ref || !user) return fail(c, PORCUPINE_BAD_REQUEST, "user and ref are required");
    pb::Request req;
    from_ref(*ref, user, folder, req.mutable_expunge()->mutable_ref());
    pb::Response r;
    return call(c, req, r);
  });
}

int porcupine_move(porcupine_client* c, const char* user, const char* folder, const porcupine_msgref* ref,
                   const char* to_folder) {
  return porcupine_move_uid(c, user, folder, ref, to_folder, nullptr);
}

int porcupine_move_uid(porcupine_client* c, const char* user, const char* folder, const porcupine_msgref* ref,
                       const char* to_folder, porcupine_delivered* out) {
  return guarded(c, [&]() -> int {
    if (!ref || !user || !to_folder || !*to_folder)
      return fail(c, PORCUPINE_BAD_REQUEST, "user, ref and to_folder are required");
    pb::Request req;
    from_ref(*ref, user, folder, req.mutable_move()->mutable_ref());
    req.mutable_move()->set_to_folder(to_folder);
    pb::Response r;
    int code = call(c, req, r);
    if (code == PORCUPINE_OK && out) {
      out->ref = *ref;
      out->uid = r.next_uid();
      out->uidvalidity = r.uidvalidity();
    }
    return code;
  });
}

// A NULL-terminated malloc'd copy of `from` (free with porcupine_folders_free).
static char** copy_names(const google::protobuf::RepeatedPtrField<std::string>& from) {
  size_t n = static_cast<size_t>(from.size());
  char** names = static_cast<char**>(std::calloc(n + 1, sizeof(char*)));
  if (!names) return nullptr;
  for (size_t i = 0; i < n; ++i) {
    names[i] = strdup(from[static_cast<int>(i)].c_str());
    if (!names[i]) {
      porcupine_folders_free(names, i);
      return nullptr;
    }
  }
  return names;
}

int porcupine_folders_get_subscribed(porcupine_client* c, const char* user, char*** names_r, size_t* count_r,
                                     char*** subscribed_r, size_t* subscribed_count_r, int* recorded_r) {
  return guarded(c, [&]() -> int {
    if (!user || !names_r || !count_r) return fail(c, PORCUPINE_BAD_REQUEST, "user, names_r and count_r are required");
    *names_r = nullptr;
    *count_r = 0;
    if (subscribed_r) *subscribed_r = nullptr;
    if (subscribed_count_r) *subscribed_count_r = 0;
    if (recorded_r) *recorded_r = 0;
    pb::Request req;
    req.mutable_folders()->set_user(user);
    pb::Response r;
    int code = call(c, req, r);
    if (code != PORCUPINE_OK) return code;
    char** names = copy_names(r.folders());
    char** subscribed = subscribed_r ? copy_names(r.subscribed()) : nullptr;
    if (!names || (subscribed_r && !subscribed)) {
      porcupine_folders_free(names, names ? static_cast<size_t>(r.folders_size()) : 0);
      porcupine_folders_free(subscribed, subscribed ? static_cast<size_t>(r.subscribed_size()) : 0);
      return fail(c, PORCUPINE_INTERNAL, "out of memory");
    }
    *names_r = names;
    *count_r = static_cast<size_t>(r.folders_size());
    if (subscribed_r) *subscribed_r = subscribed;
    if (subscribed_count_r) *subscribed_count_r = static_cast<size_t>(r.subscribed_size());
    if (recorded_r) *recorded_r = r.has_subscriptions() ? 1 : 0;
    return PORCUPINE_OK;
  });
}

int porcupine_folders_get(porcupine_client* c, const char* user, char*** names_r, size_t* count_r) {
  return porcupine_folders_get_subscribed(c, user, names_r, count_r, nullptr, nullptr, nullptr);
}

int porcupine_folder_subscribe(porcupine_client* c, const char* user, const char* folder, int on) {
  return guarded(c, [&]() -> int {
    if (!user || !folder) return fail(c, PORCUPINE_BAD_REQUEST, "user and folder are required");
    pb::Request req;
    req.mutable_folder_subscribe()->set_user(user);
    req.mutable_folder_subscribe()->set_folder(folder);
    req.mutable_folder_subscribe()->set_on(on != 0);
    pb::Response r;
    return call(c, req, r);
  });
}

void porcupine_folders_free(char** names, size_t count) {
  if (!names) return;
  for (size_t i = 0; i < count; ++i) std::free(names[i]);
  std::free(names);
}

int porcupine_folder_create(porcupine_client* c, const char* user, const char* folder) {
  return guarded(c, [&]() -> int {
    if (!user || !folder) return fail(c, PORCUPINE_BAD_REQUEST, "user and folder are required");
    pb::Request req;
    req.mutable_folder_create()->set_user(user);
    req.mutable_folder_create()->set_folder(folder);
    pb::Response r;
    return call(c, req, r);
  });
}

int porcupine_folder_delete(porcupine_client* c, const char* user, const char* folder) {
  return guarded(c, [&]() -> int {
    if (!user || !folder) return fail(c, PORCUPINE_BAD_REQUEST, "user and folder are required");
    pb::Request req;
    req.mutable_folder_delete()->set_user(user);
    req.mutable_folder_delete()->set_folder(folder);
    pb::Response r;
    return call(c, req, r);
  });
}

int porcupine_folder_rename(porcupine_client* c, const char* user, const char* from, const char* to) {
  return guarded(c, [&]() -> int {
    if (!user || !from || !to) return fail(c, PORCUPINE_BAD_REQUEST, "user, from and to are required");
    pb::Request req;
    req.mutable_folder_rename()->set_user(user);
    req.mutable_folder_rename()->set_from(from);
    req.mutable_folder_rename()->set_to(to);
    pb::Response r;
    return call(c, req, r);
  });
}

}  // extern "C"
