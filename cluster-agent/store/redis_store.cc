// SPDX-License-Identifier: MIT
// redis_store.cc - see redis_store.h for the layout and the commit order.
#include "store/redis_store.h"

#include <dirent.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <stdexcept>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "codec/codec.h"

namespace porcupine::store {

namespace {

// ---------------------------------------------------------------- helpers

struct ReplyFree {
  void operator()(redisReply* r) const {
    if (r) freeReplyObject(r);
  }
};
using Reply = std::unique_ptr<redisReply, ReplyFree>;

// hiredis writes with write(2): a Redis that died under us must give an
// error, not a SIGPIPE that kills the agent. Blocks SIGPIPE on this thread
// for the guard's life and swallows one raised meanwhile.
class SigpipeGuard {
 public:
  SigpipeGuard() {
    sigemptyset(&pipe_);
    sigaddset(&pipe_, SIGPIPE);
    sigset_t pending;
    sigpending(&pending);
    was_pending_ = sigismember(&pending, SIGPIPE) == 1;
    pthread_sigmask(SIG_BLOCK, &pipe_, &old_);
  }
  ~SigpipeGuard() {
    if (!was_pending_) {
      sigset_t pending;
      sigpending(&pending);
      if (sigismember(&pending, SIGPIPE) == 1) {
        timespec zero{0, 0};
        while (sigtimedwait(&pipe_, nullptr, &zero) == -1 && errno == EINTR) {
        }
      }
    }
    pthread_sigmask(SIG_SETMASK, &old_, nullptr);
  }
  SigpipeGuard(const SigpipeGuard&) = delete;
  SigpipeGuard& operator=(const SigpipeGuard&) = delete;

 private:
  sigset_t pipe_{};
  sigset_t old_{};
  bool was_pending_ = false;
};

std::string errno_text() { return std::strerror(errno); }

template <typename T>
bool parse_num(std::string_view s, T& out) {
  if (s.empty()) return false;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  return ec == std::errc() && p == s.data() + s.size();
}

// A spool name is a number written the way we write it ("7", never "007").
template <typename T>
bool parse_name(const std::string& s, T& out) {
  return parse_num(s, out) && std::to_string(out) == s;
}

bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool write_all(int fd, const char* p, std::size_t n) {
  while (n > 0) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += w;
    n -= static_cast<std::size_t>(w);
  }
  return true;
}

bool fsync_dir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return false;
  bool ok = ::fsync(fd) == 0;
  int saved = errno;
  ::close(fd);
  errno = saved;
  return ok;
}

// Whole file, or nothing if it does not exist or cannot be read.
// Names of the entries of a directory (not "." and ".."), and whether each
// is a directory.
bool list_dir(const std::string& dir, std::vector<std::pair<std::string, bool>>& out) {
  DIR* d = ::opendir(dir.c_str());
  if (!d) return false;
  while (dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    bool is_dir;
    if (e->d_type == DT_DIR)
      is_dir = true;
    else if (e->d_type != DT_UNKNOWN)
      is_dir = false;
    else {
      struct stat st {};
      is_dir = ::stat((dir + "/" + name).c_str(), &st) == 0 && S_ISDIR(st.st_mode);
    }
    out.emplace_back(std::move(name), is_dir);
  }
  ::closedir(d);
  return true;
}

timeval to_timeval(int ms) { return timeval{ms / 1000, (ms % 1000) * 1000}; }

// One Redis command as binary-safe arguments.
using Command = std::vector<std::string>;

// HSET/HDEL with many fields, cut so no single command grows huge.
void add_chunked(std::vector<Command>& out, const char* verb, const std::string& key,
                 std::vector<std::string>& args, std::size_t per_command) {
  for (std::size_t i = 0; i < args.size(); i += per_command) {
    Command c{verb, key};
    std::size_t end = std::min(args.size(), i + per_command);
    for (std::size_t j = i; j < end; ++j) c.push_back(std::move(args[j]));
    out.push_back(std::move(c));
  }
}

constexpr std::size_t kArgsPerCommand = 1024;  // even: HSET takes pairs
constexpr std::size_t kBodiesPerRound = 128;   // open files at once in a flush
constexpr auto kLoadingWait = std::chrono::minutes(10);
constexpr const char* kNextSeq = "next_seq";
constexpr const char* kLastVersion = "last_version";
constexpr const char* kLastLineage = "last_lineage";

}  // namespace

// ---------------------------------------------------------------- set-up

RedisStore::RedisStore(Options o, LogFn log)
    : opt_(std::move(o)), log_(std::move(log)), ctx_(nullptr, redisFree) {
  if (opt_.redis_socket.empty()) throw std::runtime_error("store: no redis socket configured");
  if (opt_.spool_dir.empty()) throw std::runtime_error("store: no spool directory configured");
  if (opt_.timeout_ms <= 0) opt_.timeout_ms = 10000;
  k_rec_ = opt_.key_prefix + "rec";
  k_prof_ = opt_.key_prefix + "prof";
  k_log_ = opt_.key_prefix + "log";
  k_ctr_ = opt_.key_prefix + "ctr";
  k_adm_ = opt_.key_prefix + "admin";

  // The spool first: it is local and its failure is the easier to explain.
  msg_dir_ = opt_.spool_dir + "/msg";
  incoming_dir_ = opt_.spool_dir + "/incoming";
  std::error_code ec;
  std::filesystem::create_directories(msg_dir_, ec);
  if (!ec) std::filesystem::create_directories(incoming_dir_, ec);
  if (ec) throw std::runtime_error("store: spool " + opt_.spool_dir + " unusable: " + ec.message());
  std::string probe = msg_dir_ + "/.probe.tmp";
  int fd = ::open(probe.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
  if (fd < 0 || !write_all(fd, "x", 1) || ::fdatasync(fd) != 0) {
    std::string why = errno_text();
    if (fd >= 0) ::close(fd);
    ::unlink(probe.c_str());
    throw std::runtime_error("store: spool " + opt_.spool_dir + " unusable: cannot write " + probe + ": " +
                             why);
  }
  ::close(fd);
  ::unlink(probe.c_str());
  if (!fsync_dir(opt_.spool_dir) || !fsync_dir(msg_dir_))
    throw std::runtime_error("store: spool " + opt_.spool_dir + " unusable: fsync: " + errno_text());

  SigpipeGuard guard;
  redisContext* c = redisConnectUnixWithTimeout(opt_.redis_socket.c_str(), to_timeval(opt_.timeout_ms));
  if (!c) throw std::runtime_error("store: cannot allocate a redis context");
  ctx_.reset(c);
  if (c->err) throw std::runtime_error("store: redis unreachable at " + opt_.redis_socket + ": " + c->errstr);
  redisSetTimeout(c, to_timeval(opt_.timeout_ms));
  Reply pong(static_cast<redisReply*>(redisCommand(c, "PING")));
  if (!pong || pong->type == REDIS_REPLY_ERROR)
    throw std::runtime_error("store: redis at " + opt_.redis_socket + " does not answer PING: " +
                             (pong ? std::string(pong->str, pong->len) : std::string(c->errstr)));

  // A Redis restarted with the agent replays its AOF first and refuses
  // reads meanwhile ("-LOADING"): wait for it rather than fail the start.
  bool said = false;
  for (auto give_up = std::chrono::steady_clock::now() + kLoadingWait;;) {
    Reply r(static_cast<redisReply*>(redisCommand(c, "EXISTS %b", k_ctr_.data(), k_ctr_.size())));
    if (!r) throw std::runtime_error("store: redis at " + opt_.redis_socket + ": " + c->errstr);
    if (r->type != REDIS_REPLY_ERROR || std::string_view(r->str, r->len).substr(0, 7) != "LOADING") break;
    if (std::chrono::steady_clock::now() > give_up)
      throw std::runtime_error("store: redis at " + opt_.redis_socket + " still loading its data set");
    if (!said) this->log("store: redis is loading its data set; waiting");
    said = true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }

  // Durability rests on Redis's own settings: say so if they are weaker.
  // CONFIG may be renamed away; then there is nothing to check.
  for (auto [param, want] : {std::pair{"appendonly", "yes"}, std::pair{"appendfsync", "always"}}) {
    Reply r(static_cast<redisReply*>(redisCommand(c, "CONFIG GET %s", param)));
    if (!r) throw std::runtime_error("store: redis at " + opt_.redis_socket + ": " + c->errstr);
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 2 && r->element[1]->type == REDIS_REPLY_STRING &&
        std::string_view(r->element[1]->str, r->element[1]->len) != want)
      this->log(std::string("store: WARNING: redis has ") + param + " " +
                std::string(r->element[1]->str, r->element[1]->len) + ", not " + want +
                ": acknowledged writes can be lost in a crash");
  }
}

RedisStore::~RedisStore() = default;

void RedisStore::log(const std::string& line) const {
  if (log_) log_(line);
}

bool RedisStore::reconnect() {
  if (redisReconnect(ctx_.get()) != REDIS_OK) {
    log(std::string("store: redis unreachable at ") + opt_.redis_socket + ": " + ctx_->errstr);
    return false;
  }
  redisSetTimeout(ctx_.get(), to_timeval(opt_.timeout_ms));
  log("store: reconnected to redis at " + opt_.redis_socket);
  return true;
}

std::string RedisStore::origin_dir(NodeId origin) const { return msg_dir_ + "/" + std::to_string(origin); }

std::string RedisStore::body_path(const MsgId& id) const {
  return origin_dir(id.origin) + "/" + std::to_string(id.seq);
}

// ---------------------------------------------------------------- load and startup scan

DurableSnapshot RedisStore::load() {
  SigpipeGuard guard;
  if (ctx_->err && !reconnect()) throw std::runtime_error("store: cannot load: redis unreachable");
  auto fetch = [this](const std::string& key) {
    Reply r(static_cast<redisReply*>(redisCommand(ctx_.get(), "HGETALL %b", key.data(), key.size())));
    if (!r) throw std::runtime_error("store: cannot read " + key + " from redis: " + ctx_->errstr);
    if (r->type == REDIS_REPLY_ERROR)
      throw std::runtime_error("store: cannot read " + key + " from redis: " + std::string(r->str, r->len));
    if (r->type != REDIS_REPLY_ARRAY || r->elements % 2 != 0)
      throw std::runtime_error("store: unexpected redis reply to HGETALL " + key);
    for (std::size_t i = 0; i < r->elements; ++i)
      if (r->element[i]->type != REDIS_REPLY_STRING)
        throw std::runtime_error("store: unexpected redis reply to HGETALL " + key);
    return r;
  };
  auto field = [](const Reply& r, std::size_t i) {
    return std::string_view(r->element[i]->str, r->element[i]->len);
  };

  DurableSnapshot snap;
  std::set<MsgId> durable_needed;  // bodies the flushed index names
  std::size_t undecodable = 0;
  std::string err;

  Reply recs = fetch(k_rec_);
  for (std::size_t i = 0; i < recs->elements; i += 2) {
    MessageRecord r;
    if (!codec::decode_record(field(recs, i + 1), r, &err)) {
      ++undecodable;
      log("store: record " + std::string(field(recs, i)) + " undecodable, skipped: " + err);
      continue;
    }
    r.body.clear();
    if (r.has_body) durable_needed.insert(r.id);
    snap.records[r.id] = std::move(r);
  }
  recs.reset();

  Reply profs = fetch(k_prof_);
  for (std::size_t i = 0; i < profs->elements; i += 2) {
    Profile p;
    if (!codec::decode_profile(field(profs, i + 1), p, &err)) {
      ++undecodable;
      log("store: profile " + std::string(field(profs, i)) + " undecodable, skipped: " + err);
      continue;
    }
    snap.profiles[p.user] = std::move(p);
  }
  profs.reset();

  Reply logs = fetch(k_log_);
  for (std::size_t i = 0; i < logs->elements; i += 2) {
    LogEntry e;
    if (!codec::decode_log_entry(field(logs, i + 1), e, &err)) {
      ++undecodable;
      log("store: log entry " + std::string(field(logs, i)) + " undecodable, skipped: " + err);
      continue;
    }
    if (e.update.kind == Update::Kind::Store) durable_needed.insert(e.update.record.id);
    snap.log[e.update.id] = std::move(e);
  }
  logs.reset();

  Reply ctr = fetch(k_ctr_);
  for (std::size_t i = 0; i < ctr->elements; i += 2) {
    std::string_view name = field(ctr, i), value = field(ctr, i + 1);
    bool ok = true;
    if (name == kNextSeq)
      ok = parse_num(value, snap.next_seq);
    else if (name == kLastVersion)
      ok = parse_num(value, snap.last_version);
    else if (name == kLastLineage)
      ok = parse_num(value, snap.last_lineage);
    // Counters only ever grow; a wrong one would reissue ids. Refuse to start.
    if (!ok) throw std::runtime_error("store: counter " + std::string(name) + " is not a number");
  }
  bool no_counters = ctr->elements == 0;
  ctr.reset();

  {
    Reply adm(static_cast<redisReply*>(redisCommand(ctx_.get(), "GET %b", k_adm_.data(), k_adm_.size())));
    if (!adm) throw std::runtime_error("store: cannot read " + k_adm_ + " from redis: " + ctx_->errstr);
    if (adm->type == REDIS_REPLY_STRING && !codec::decode_admin(std::string_view(adm->str, adm->len), snap.admin, &err)) {
      ++undecodable;
      log("store: the table of drained and gone nodes is undecodable, skipped: " + err);
    }
  }
  snap.fresh = no_counters && snap.records.empty() && snap.profiles.empty() && snap.log.empty() && !q_counters_ &&
               q_records_.empty();

  // What is queued but not flushed is part of the picture.
  for (const auto& [id, r] : q_records_) {
    if (r)
      snap.records[id] = *r;
    else
      snap.records.erase(id);
  }
  for (const auto& [user, p] : q_profiles_) {
    if (p)
      snap.profiles[user] = *p;
    else
      snap.profiles.erase(user);
  }
  if (q_admin_) snap.admin = *q_admin_;
  for (const auto& [v, e] : q_log_) {
    if (e)
      snap.log[v] = *e;
    else
      snap.log.erase(v);
  }
  if (q_counters_) {
    snap.next_seq = q_counters_->next_seq;
    snap.last_version = q_counters_->last_version;
    snap.last_lineage = q_counters_->last_lineage;
  }

  held_.clear();
  store_logs_.clear();
  log_refs_.clear();
  bodies_.clear();
  origin_dirs_.clear();
  for (const auto& [id, r] : snap.records)
    if (r.has_body) held_.insert(id);
  for (const auto& [v, e] : snap.log)
    if (e.update.kind == Update::Kind::Store) {
      store_logs_[v] = e.update.record.id;
      ++log_refs_[e.update.record.id];
    }

  // The scan: every file in the spool is a body the index needs, a body
  // of a queued drop, or left over from a crash.
  std::size_t dropped = 0, temps = 0, missing = 0, log_missing = 0;
  unindexed_.clear();
  auto remove_file = [this](const std::string& path) {
    if (::unlink(path.c_str()) == 0 || errno == ENOENT) return true;
    log("store: cannot remove " + path + ": " + errno_text());
    return false;
  };
  // Staging files of deliveries and transfers cut off by the crash.
  std::vector<std::pair<std::string, bool>> staged;
  if (!list_dir(incoming_dir_, staged))
    throw std::runtime_error("store: cannot read spool " + incoming_dir_ + ": " + errno_text());
  for (const auto& [name, is_dir] : staged)
    if (!is_dir && remove_file(incoming_dir_ + "/" + name)) ++temps;
  std::vector<std::pair<std::string, bool>> top;
  if (!list_dir(msg_dir_, top))
    throw std::runtime_error("store: cannot read spool " + msg_dir_ + ": " + errno_text());
  for (const auto& [name, is_dir] : top) {
    std::string path = msg_dir_ + "/" + name;
    NodeId origin = kNoNode;
    if (!is_dir) {
      if (ends_with(name, ".tmp")) {
        if (remove_file(path)) ++temps;
      } else {
        log("store: unexpected file " + path + " left alone");
      }
      continue;
    }
    if (!parse_name(name, origin)) {
      log("store: unexpected directory " + path + " left alone");
      continue;
    }
    origin_dirs_.insert(origin);
    std::vector<std::pair<std::string, bool>> files;
    if (!list_dir(path, files))
      throw std::runtime_error("store: cannot read spool " + path + ": " + errno_text());
    for (const auto& [fname, fdir] : files) {
      std::string fpath = path + "/" + fname;
      MsgId id{origin, 0};
      if (!fdir && ends_with(fname, ".tmp")) {
        if (remove_file(fpath)) ++temps;
        continue;
      }
      if (fdir || !parse_name(fname, id.seq)) {
        log("store: unexpected file " + fpath + " left alone");
        continue;
      }
      auto rec = snap.records.find(id);
      if (needed(id)) {
        bodies_.insert(id);
      } else if (durable_needed.count(id)) {
        q_unlinks_.insert(id);  // dropped by a queued write: goes after the flush
      } else if (rec != snap.records.end() && rec->second.expunged) {
        // The index says the message is expunged, which is for good: its
        // body went when it was, but the crash came before the unlink.
        if (remove_file(fpath)) ++dropped;
      } else {
        // No record (or one without a body) names it: a delivery cut off
        // before its index write, or an index that lost the entry. The two
        // cannot be told apart here, so the body stays; a record for it,
        // from a peer (sync) or a retried delivery, claims it.
        if (unindexed_.size() < 20)
          log("error: store: body file " + fpath + " is named by no record; kept until a record claims it");
        bodies_.insert(id);
        unindexed_.insert(id);
      }
    }
  }
  for (const auto& [id, body] : q_bodies_) bodies_.insert(id);
  loaded_ = true;

  for (auto& [id, r] : snap.records) {
    if (!r.has_body || bodies_.count(id)) continue;
    log("error: store: BODY LOST: record " + id.str() + " has a body but " + body_path(id) +
        " is missing; a replica must supply it again");
    r.has_body = false;
    held_.erase(id);
    ++missing;
  }
  for (auto& [v, e] : snap.log) {
    if (e.update.kind != Update::Kind::Store) continue;
    if (auto q = q_bodies_.find(e.update.record.id); q != q_bodies_.end()) {
      e.update.record.body = q->second;  // queued, not yet written
    } else if (bodies_.count(e.update.record.id)) {
      // By reference: pushing it streams the file (it stays while the entry does).
      e.update.record.body = Body::in_file(std::make_shared<SpoolFile>(body_path(e.update.record.id), false),
                                           e.update.record.size);
    } else {
      log("error: store: BODY LOST: log entry " + v.str() + " stores " + e.update.record.id.str() + " but " +
          body_path(e.update.record.id) + " is missing");
      ++log_missing;
    }
  }

  for (const MsgId& id : unindexed_) {
    struct stat st {};
    UnindexedBody& u = snap.unindexed[id];
    if (::stat(body_path(id).c_str(), &st) == 0) {
      u.size = static_cast<std::uint64_t>(st.st_size);
      u.written = static_cast<Time>(st.st_mtim.tv_sec) * 1000 + st.st_mtim.tv_nsec / 1000000;
    }
  }
  damage_ = Damage{unindexed_.size(), missing, log_missing, undecodable};
  log("store: loaded " + std::to_string(snap.records.size()) + " records, " +
      std::to_string(snap.profiles.size()) + " profiles, " + std::to_string(snap.log.size()) +
      " log entries; removed " + std::to_string(dropped) + " bodies of expunged messages, " +
      std::to_string(temps) + " temp files");
  if (damage_.any())
    log("error: store: the index and the spool disagree (" + damage_.str() +
        "): the index lost entries (a damaged or cut Redis file?) or a crash cut deliveries off; no body is "
        "deleted for it, and the peers are asked for what this node should hold");
  return snap;
}

void RedisStore::ensure_loaded() {
  // The body index comes from load(); the core always loads first.
  if (!loaded_) (void)load();
}

// ---------------------------------------------------------------- queued writes

bool RedisStore::needed(const MsgId& id) const {
  return held_.count(id) || log_refs_.count(id) || unindexed_.count(id);
}

std::string RedisStore::Damage::str() const {
  return std::to_string(unindexed) + " bodies named by no record, " + std::to_string(missing_bodies) +
         " records missing their bodies, " + std::to_string(log_missing) + " log entries missing bodies, " +
         std::to_string(undecodable) + " undecodable entries";
}

void RedisStore::queue_body(const MsgId& id, const Body& body) {
  if (body.where() == Body::Where::Transfer) {  // the transport resolves these; never on disk
    log("store: body of " + id.str() + " never arrived; not stored");
    return;
  }
  q_bodies_[id] = body;
  q_unlinks_.erase(id);
  bodies_.insert(id);
}

void RedisStore::drop_body_if_unneeded(const MsgId& id) {
  if (needed(id) || !bodies_.count(id)) return;
  bodies_.erase(id);
  q_bodies_.erase(id);
  q_unlinks_.insert(id);  // after the EXEC; a file never written is no error
}

void RedisStore::put_record(const MessageRecord& r) {
  ensure_loaded();
  MessageRecord meta = r;
  meta.body.clear();
  // An unindexed body is the record's once a record with a body names it,
  // and goes only with an expunge (bodies never change).
  if (r.has_body || r.expunged) unindexed_.erase(r.id);
  if (r.has_body) {
    held_.insert(r.id);
    // Bodies are immutable: one already on disk (or queued) is this one.
    if (!r.body.empty() && !bodies_.count(r.id)) queue_body(r.id, r.body);
  } else {
    held_.erase(r.id);
    drop_body_if_unneeded(r.id);
  }
  q_records_[r.id] = std::move(meta);
}

void RedisStore::erase_record(const MsgId& id) {
  ensure_loaded();
  held_.erase(id);
  drop_body_if_unneeded(id);
  q_records_[id] = std::nullopt;
}

void RedisStore::put_profile(const Profile& p) {
  ensure_loaded();
  q_profiles_[p.user] = p;
}

void RedisStore::erase_profile(const std::string& user) {
  ensure_loaded();
  q_profiles_[user] = std::nullopt;
}

void RedisStore::put_admin(const AdminMap& a) { q_admin_ = a; }

void RedisStore::put_log(const LogEntry& e) {
  ensure_loaded();
  LogEntry meta = e;
  if (e.update.kind == Update::Kind::Store) {
    const MsgId& id = e.update.record.id;
    if (store_logs_.emplace(e.update.id, id).second) ++log_refs_[id];
    // A coordinator that is not a replica holds the body only for the log.
    if (!e.update.record.body.empty() && !bodies_.count(id)) queue_body(id, e.update.record.body);
    meta.update.record.body.clear();
  }
  q_log_[e.update.id] = std::move(meta);
}

void RedisStore::erase_log(const Version& v) {
  ensure_loaded();
  q_log_[v] = std::nullopt;
  auto it = store_logs_.find(v);
  if (it == store_logs_.end()) return;
  MsgId id = it->second;
  store_logs_.erase(it);
  if (--log_refs_[id] == 0) log_refs_.erase(id);
  drop_body_if_unneeded(id);
}

void RedisStore::put_counters(std::uint64_t next_seq, Time last_version, std::uint32_t last_lineage) {
  q_counters_ = Counters{next_seq, last_version, last_lineage};
}

std::optional<std::string> RedisStore::get_body(const MsgId& id) {
  if (auto it = q_bodies_.find(id); it != q_bodies_.end()) return read_body(it->second);
  if (q_unlinks_.count(id)) return std::nullopt;
  if (loaded_ && !bodies_.count(id)) return std::nullopt;
  return read_file(body_path(id));
}

std::optional<Body> RedisStore::body_ref(const MsgId& id) {
  if (auto it = q_bodies_.find(id); it != q_bodies_.end()) return it->second;
  if (q_unlinks_.count(id)) return std::nullopt;
  if (loaded_ && !bodies_.count(id)) return std::nullopt;
  std::string path = body_path(id);
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return std::nullopt;
  auto size = static_cast<std::uint64_t>(st.st_size);
  if (size <= kInlineBodyMax) {
    if (auto b = get_body(id)) return Body(std::move(*b));
    return std::nullopt;
  }
  return Body::in_file(std::make_shared<SpoolFile>(path, false), size);
}

std::optional<std::string> RedisStore::body_head(const MsgId& id, std::uint64_t max) {
  auto b = body_ref(id);
  if (!b) return std::nullopt;
  return read_head(*b, max);
}

int RedisStore::open_body(const MsgId& id) const {
  if (auto it = q_bodies_.find(id); it != q_bodies_.end()) return store::open_body(it->second);
  if (q_unlinks_.count(id) || (loaded_ && !bodies_.count(id))) return -1;
  return ::open(body_path(id).c_str(), O_RDONLY | O_CLOEXEC);
}

bool RedisStore::dirty() const {
  return !q_records_.empty() || !q_profiles_.empty() || !q_log_.empty() || q_counters_ || q_admin_ ||
         !q_bodies_.empty() || !q_unlinks_.empty();
}

// ---------------------------------------------------------------- flush

bool RedisStore::flush() {
  if (!dirty()) return true;
  if (!write_bodies()) return false;
  if (!exec_batch()) return false;
  unlink_dropped();
  q_records_.clear();
  q_profiles_.clear();
  q_log_.clear();
  q_counters_.reset();
  q_admin_.reset();
  q_bodies_.clear();
  q_unlinks_.clear();
  ++stats_.flushes;
  return true;
}

// Step 1: every new body on disk under its final name, directories synced.
// Files go in rounds: each file of a round is written and its writeback
// started before the first fdatasync, so one journal commit covers many.
bool RedisStore::write_bodies() {
  if (q_bodies_.empty()) return true;
  struct Open {
    std::string tmp, path;
    int fd;
  };
  std::vector<Open> round;
  std::set<std::string> dirs;
  bool new_origin_dir = false;
  auto fail = [&](const std::string& what) {
    std::string why = errno_text();
    for (const Open& f : round) {
      if (f.fd >= 0) ::close(f.fd);
      ::unlink(f.tmp.c_str());
    }
    round.clear();
    log("store: flush failed: " + what + ": " + why);
    return false;
  };
  auto finish_round = [&] {
    for (const Open& f : round) {
      if (::fdatasync(f.fd) != 0) return fail("cannot fdatasync " + f.tmp);
      ++stats_.fsyncs;
    }
    for (Open& f : round) {
      int fd = std::exchange(f.fd, -1);
      if (::close(fd) != 0) return fail("cannot write " + f.tmp);
      if (::rename(f.tmp.c_str(), f.path.c_str()) != 0) return fail("cannot rename " + f.tmp);
      ++stats_.body_files;
    }
    round.clear();
    return true;
  };

  for (const auto& [id, body] : q_bodies_) {
    std::string dir = origin_dir(id.origin);
    if (!origin_dirs_.count(id.origin)) {
      if (::mkdir(dir.c_str(), 0750) == 0)
        new_origin_dir = true;
      else if (errno != EEXIST)
        return fail("cannot create " + dir);
      origin_dirs_.insert(id.origin);
    }
    dirs.insert(dir);
    std::string path = body_path(id);
    if (body.where() == Body::Where::File) {
      // Already durable in its staging file: linked into place, no copy.
      std::string tmp = path + ".tmp";
      ::unlink(tmp.c_str());
      if (::link(body.file()->path().c_str(), tmp.c_str()) != 0) return fail("cannot link " + tmp);
      if (::rename(tmp.c_str(), path.c_str()) != 0) return fail("cannot rename " + tmp);
      ++stats_.body_files;
      continue;
    }
    if (body.where() != Body::Where::Memory) return fail("body of " + id.str() + " never arrived");
    round.push_back(Open{path + ".tmp", path, -1});
    Open& f = round.back();
    f.fd = ::open(f.tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    if (f.fd < 0) return fail("cannot create " + f.tmp);
    if (!write_all(f.fd, body.bytes().data(), body.bytes().size())) return fail("cannot write " + f.tmp);
    ::sync_file_range(f.fd, 0, 0, SYNC_FILE_RANGE_WRITE);  // a hint; fdatasync checks
    if (round.size() == kBodiesPerRound && !finish_round()) return false;
  }
  if (!finish_round()) return false;

  if (new_origin_dir) dirs.insert(msg_dir_);
  for (const std::string& dir : dirs) {
    if (!fsync_dir(dir)) return fail("cannot fsync " + dir);
    ++stats_.fsyncs;
  }
  return true;
}

// Step 2: every queued metadata write in one MULTI/EXEC, every reply read.
bool RedisStore::exec_batch() {
  std::vector<Command> cmds;
  {
    std::vector<std::string> set, del;
    for (const auto& [id, r] : q_records_) {
      if (r) {
        set.push_back(id.str());
        set.push_back(codec::encode_record(*r));
      } else {
        del.push_back(id.str());
      }
    }
    add_chunked(cmds, "HSET", k_rec_, set, kArgsPerCommand);
    add_chunked(cmds, "HDEL", k_rec_, del, kArgsPerCommand);
    set.clear();
    del.clear();
    for (const auto& [user, p] : q_profiles_) {
      if (p) {
        set.push_back(user);
        set.push_back(codec::encode_profile(*p));
      } else {
        del.push_back(user);
      }
    }
    add_chunked(cmds, "HSET", k_prof_, set, kArgsPerCommand);
    add_chunked(cmds, "HDEL", k_prof_, del, kArgsPerCommand);
    set.clear();
    del.clear();
    for (const auto& [v, e] : q_log_) {
      if (e) {
        set.push_back(v.str());
        set.push_back(codec::encode_log_entry(*e));
      } else {
        del.push_back(v.str());
      }
    }
    add_chunked(cmds, "HSET", k_log_, set, kArgsPerCommand);
    add_chunked(cmds, "HDEL", k_log_, del, kArgsPerCommand);
    if (q_counters_)
      cmds.push_back(Command{"HSET", k_ctr_, kNextSeq, std::to_string(q_counters_->next_seq), kLastVersion,
                             std::to_string(q_counters_->last_version), kLastLineage,
                             std::to_string(q_counters_->last_lineage)});
    if (q_admin_) cmds.push_back(Command{"SET", k_adm_, codec::encode_admin(*q_admin_)});
  }
  if (cmds.empty()) return true;  // only unlinks queued

  SigpipeGuard guard;
  if (ctx_->err && !reconnect()) return false;
  redisContext* c = ctx_.get();
  auto fail = [this](const std::string& why) {
    log("store: flush failed: redis: " + why);
    return false;
  };

  redisAppendCommand(c, "MULTI");
  std::vector<const char*> argv;
  std::vector<std::size_t> lens;
  for (const Command& cmd : cmds) {
    argv.clear();
    lens.clear();
    for (const std::string& a : cmd) {
      argv.push_back(a.data());
      lens.push_back(a.size());
    }
    if (redisAppendCommandArgv(c, static_cast<int>(argv.size()), argv.data(), lens.data()) != REDIS_OK)
      return fail(c->errstr);
  }
  redisAppendCommand(c, "EXEC");

  // Every reply is read even after an error, so the connection stays in step.
  std::string first_error;
  for (std::size_t i = 0; i <= cmds.size(); ++i) {
    void* raw = nullptr;
    if (redisGetReply(c, &raw) != REDIS_OK) return fail(c->errstr);
    Reply r(static_cast<redisReply*>(raw));
    if (r->type == REDIS_REPLY_ERROR && first_error.empty()) first_error.assign(r->str, r->len);
  }
  void* raw = nullptr;
  if (redisGetReply(c, &raw) != REDIS_OK) return fail(c->errstr);
  Reply exec(static_cast<redisReply*>(raw));
  stats_.commands += cmds.size();
  if (exec->type == REDIS_REPLY_ERROR)
    return fail(std::string(exec->str, exec->len) + (first_error.empty() ? "" : " (" + first_error + ")"));
  if (exec->type != REDIS_REPLY_ARRAY) return fail("transaction aborted");
  if (exec->elements != cmds.size())
    return fail("EXEC returned " + std::to_string(exec->elements) + " replies for " +
                std::to_string(cmds.size()) + " commands");
  for (std::size_t i = 0; i < exec->elements; ++i)
    if (exec->element[i]->type == REDIS_REPLY_ERROR)
      return fail(std::string(exec->element[i]->str, exec->element[i]->len));
  return true;
}

// Step 3: bodies dropped by the batch go, now that the index no longer
// names them. A crash before this leaves orphans for the next load().
void RedisStore::unlink_dropped() {
  for (const MsgId& id : q_unlinks_) {
    std::string path = body_path(id);
    if (::unlink(path.c_str()) != 0 && errno != ENOENT)
      log("store: cannot remove body file " + path + ": " + errno_text() + " (removed at next start)");
  }
}

}  // namespace porcupine::store
