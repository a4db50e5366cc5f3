// SPDX-License-Identifier: MIT
// ctl_main.cc - porcupinectl: the operator's command line for one node's
// agent (through its local socket). See docs/agent.md.
//
//   porcupinectl [--json] [--socket PATH] [--timeout MS] COMMAND ...
//     status | nodes | buckets
//     user add ADDR [--password P | --password-hash H | --password-stdin] [--quota BYTES]
//     user passwd ADDR (same password options) | user quota ADDR BYTES
//     user del ADDR | user enable ADDR | user disable ADDR
//     user list | user show ADDR | user auth ADDR --password P
//     mail deliver ADDR... [--folder F] < message
//     mail list ADDR [--folder F] | mail fetch ADDR UID [--folder F]
//     mail flags ADDR UID FLAG-OR-KEYWORD,... [--folder F] | mail expunge ADDR UID [--folder F]
//     mail move ADDR UID TO [--folder F]
//     folder list ADDR | folder create ADDR NAME | folder delete ADDR NAME
//     folder rename ADDR FROM TO
//     drain N | undrain N | node forget N
//
// Exit status: 0 done; 1 refused (no such user, exists, wrong password,
// bad request); 2 bad usage; 3 the cluster could not answer in time (try
// again); 4 the agent is unreachable.
#include <charconv>
#include <crypt.h>

#include <boost/program_options.hpp>
#include <iomanip>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "client/client.h"

namespace po = boost::program_options;
using json = nlohmann::json;
using porcupine::client::Client;
namespace pb = porcupine::agentpb;

namespace {

constexpr int kRefused = 1, kUsage = 2, kTempfail = 3, kUnreachable = 4;

// Every command, for --help and a usage error; porcupinectl(8) describes
// each (tests/packaging/man_test.py holds it to this list).
constexpr const char* kCommands =
    "usage: porcupinectl [options] COMMAND ...\n"
    "commands:\n"
    "  status                      this node's view: epoch, backlog, the members\n"
    "  nodes                       the members: address, state, load, weight, buckets\n"
    "  buckets                     how many buckets each member manages\n"
    "  user add ADDR               add a user (--password, --password-stdin or --password-hash; --quota)\n"
    "  user passwd ADDR            set a user's password (the same password options)\n"
    "  user quota ADDR BYTES       set a user's quota (0: none)\n"
    "  user del ADDR               delete a user\n"
    "  user enable ADDR            enable a user\n"
    "  user disable ADDR           disable a user: no login, mail refused by the milter\n"
    "  user list                   every user\n"
    "  user show ADDR              a user: enabled, usage, quota, where its profile is\n"
    "  user auth ADDR              check a password (--password or --password-stdin)\n"
    "  mail deliver ADDR...        deliver standard input to each ADDR, into --folder\n"
    "  mail list ADDR              the messages of --folder (default INBOX)\n"
    "  mail fetch ADDR UID         print a message of --folder\n"
    "  mail flags ADDR UID FLAGS   set a message's flags and keywords, e.g. seen,flagged,$Label1\n"
    "  mail expunge ADDR UID       expunge a message of --folder\n"
    "  mail move ADDR UID TO       move a message of --folder to folder TO\n"
    "  folder list ADDR            a user's folders\n"
    "  folder create ADDR NAME     create a folder\n"
    "  folder delete ADDR NAME     delete a folder and its messages\n"
    "  folder rename ADDR FROM TO  rename a folder\n"
    "  drain N                     move node N's buckets, profiles and copies to other nodes\n"
    "  undrain N                   take a draining (or forgotten) node N back\n"
    "  node forget N               node N (down) is lost for good: copy what it held elsewhere\n";

struct Ctl {
  Client client;
  bool as_json = false;

  int exit_for(pb::Code c) {
    switch (c) {
      case pb::OK: return 0;
      case pb::TEMPFAIL: return kTempfail;
      case pb::INTERNAL: return kTempfail;
      default: return kRefused;
    }
  }

  // Runs a request; on failure prints why and returns the exit status.
  std::optional<pb::Response> call(pb::Request& r, int& status) {
    auto resp = client.call(r);
    if (!resp) {
      std::cerr << "porcupinectl: " << client.error() << "\n";
      status = kUnreachable;
      return std::nullopt;
    }
    if (resp->code() != pb::OK) {
      std::cerr << "porcupinectl: " << porcupine::client::code_name(resp->code())
                << (resp->detail().empty() ? "" : ": " + resp->detail()) << "\n";
      status = exit_for(resp->code());
      return std::nullopt;
    }
    status = 0;
    return resp;
  }
};

std::string hash_password(const std::string& password) {
  char* setting = crypt_gensalt_ra("$6$", 0, nullptr, 0);
  if (!setting) return {};
  crypt_data data{};
  const char* out = crypt_r(password.c_str(), setting, &data);
  std::free(setting);
  if (!out || out[0] == '*') return {};
  return std::string("{SHA512-CRYPT}") + out;
}

std::string flags_text(std::uint32_t f) {
  static const char* names[] = {"\\Seen", "\\Answered", "\\Flagged", "\\Deleted", "\\Draft"};
  std::string s;
  for (int i = 0; i < 5; ++i)
    if (f & (1u << i)) s += (s.empty() ? "" : " ") + std::string(names[i]);
  return s;
}

// "seen,flagged,$Label1": system flags by name (with or without the
// backslash); any other word is an IMAP keyword, kept as written.
bool parse_flags(const std::string& text, std::uint32_t& out, std::vector<std::string>& keywords) {
  static const std::map<std::string, std::uint32_t> names = {
      {"seen", 1}, {"answered", 2}, {"flagged", 4}, {"deleted", 8}, {"draft", 16}, {"none", 0}};
  out = 0;
  std::stringstream ss(text);
  std::string w;
  while (std::getline(ss, w, ',')) {
    std::string lower = w;
    for (auto& ch : lower) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    if (!lower.empty() && lower[0] == '\\') lower.erase(0, 1);
    auto it = names.find(lower);
    if (it != names.end()) out |= it->second;
    else if (!w.empty() && w[0] != '\\') keywords.push_back(w);
    else return false;
  }
  return true;
}

json status_json(const pb::Status& s) {
  json j;
  j["node"] = s.node_id();
  j["epoch"] = s.epoch();
  j["in_group"] = s.in_group();
  j["buckets"] = s.buckets();
  j["buckets_not_ready"] = s.buckets_not_ready();
  j["replication_backlog"] = s.replication_backlog();
  j["pending_reports"] = s.pending_reports();
  j["records"] = s.records();
  j["uptime_ms"] = s.uptime_ms();
  j["store_flushes"] = s.flushes();
  j["version"] = s.version();
  j["map_digest"] = s.map_digest();
  j["store_damage"] = s.store_damage();
  j["unindexed_bodies"] = s.unindexed_bodies();
  j["admin_state"] = s.admin_state();
  j["admin"] = json::array();
  for (const auto& a : s.admin())
    j["admin"].push_back({{"node", a.node()}, {"state", a.state()}, {"version", a.version()}});
  j["repair"] = {{"copies", s.repair_copies()},     {"bytes", s.repair_bytes()},
                 {"pending", s.repair_pending()},   {"inflight", s.repair_inflight()},
                 {"profiles", s.repair_profiles()}, {"passes", s.repair_passes()},
                 {"failed", s.repair_failed()}};
  j["drain"] = {{"messages", s.drain_messages()},
                {"bytes", s.drain_bytes()},
                {"profiles", s.drain_profiles()},
                {"buckets", s.drain_buckets()}};
  j["cache"] = {{"bytes", s.cache_bytes()},         {"budget", s.cache_budget()},
                {"entries", s.cache_entries()},     {"hits", s.cache_hits()},
                {"misses", s.cache_misses()},       {"evictions", s.cache_evictions()},
                {"refused", s.cache_refused()}};
  j["fetched"] = {{"whole", s.fetches()},
                  {"whole_bytes", s.fetched_bytes()},
                  {"headers", s.header_fetches()},
                  {"header_bytes", s.header_bytes()}};
  j["sync"] = {{"rounds", s.sync_rounds()},
               {"users_pulled", s.sync_users_pulled()},
               {"bodies_copied", s.sync_bodies_copied()},
               {"bodies_pending", s.sync_bodies_pending()}};
  j["members"] = json::array();
  for (const auto& m : s.members())
    j["members"].push_back({{"id", m.id()}, {"weight", m.weight()}, {"load", m.load()}, {"address", m.address()},
                            {"connected", m.connected()}, {"buckets", m.buckets()}, {"full", m.full()}});
  j["known_not_members"] = json::array();
  for (auto k : s.known()) j["known_not_members"].push_back(k);
  return j;
}

json message_json(const pb::MessageInfo& m) {
  json replicas = json::array();
  for (auto r : m.ref().replicas()) replicas.push_back(r);
  return {{"uid", m.uid()},
          {"id", std::to_string(m.ref().origin()) + ":" + std::to_string(m.ref().seq())},
          {"flags", m.flags()},
          {"keywords", std::vector<std::string>(m.keywords().begin(), m.keywords().end())},
          {"size", m.size()},
          {"internal_date_ms", m.internal_date_ms()},
          {"replicas", replicas}};
}

}  // namespace

int main(int argc, char** argv) {
  std::string socket_path = "/run/porcupine/agent.sock", folder = "INBOX", password, password_hash;
  int timeout = 10000;
  std::uint64_t quota = 0;
  std::vector<std::string> args;
  po::options_description opts("porcupinectl options");
  opts.add_options()("help,h", "this help")("json", "machine-readable output")(
      "socket,s", po::value(&socket_path), "the agent's local socket")(
      "timeout", po::value(&timeout), "milliseconds to wait for an answer")(
      "folder,f", po::value(&folder), "folder for mail commands (default INBOX)")(
      "password", po::value(&password), "password (prefer --password-stdin)")(
      "password-hash", po::value(&password_hash), "a ready hash in a Dovecot scheme, e.g. {SHA512-CRYPT}$6$...")(
      "password-stdin", "read the password from the first line of standard input")(
      "quota", po::value(&quota), "quota in bytes (0: none)");
  po::options_description hidden;
  hidden.add_options()("args", po::value(&args));
  po::positional_options_description pos;
  pos.add("args", -1);
  po::options_description all;
  all.add(opts).add(hidden);
  po::variables_map vm;
  try {
    po::store(po::command_line_parser(argc, argv).options(all).positional(pos).run(), vm);
    po::notify(vm);
  } catch (const std::exception& e) {
    std::cerr << "porcupinectl: " << e.what() << "\n";
    return kUsage;
  }
  auto usage = [&]() {
    std::cerr << kCommands << opts;
    return kUsage;
  };
  // A whole decimal number, or a usage error naming the argument.
  auto number = [](const std::string& text, auto& out, const char* what) {
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), out);
    if (ec == std::errc() && end == text.data() + text.size() && !text.empty()) return true;
    std::cerr << "porcupinectl: " << what << " must be a number, not \"" << text << "\"\n";
    return false;
  };
  if (vm.count("help") || args.empty()) return vm.count("help") ? (std::cout << kCommands << opts, 0) : usage();
  if (vm.count("password-stdin")) std::getline(std::cin, password);

  Ctl ctl{Client(socket_path, timeout), vm.count("json") > 0};
  int status = 0;
  const std::string cmd = args[0];
  auto need = [&](std::size_t n) { return args.size() >= n; };

  if (cmd == "status" || cmd == "nodes" || cmd == "buckets") {
    pb::Request r;
    r.mutable_status();
    auto resp = ctl.call(r, status);
    if (!resp) return status;
    const pb::Status& s = resp->status();
    json j = status_json(s);
    if (ctl.as_json) {
      if (cmd == "nodes") std::cout << j["members"].dump(2) << "\n";
      else if (cmd == "buckets") {
        json b = json::object();
        for (const auto& m : s.members()) b[std::to_string(m.id())] = m.buckets();
        std::cout << b.dump(2) << "\n";
      } else std::cout << j.dump(2) << "\n";
      return 0;
    }
    if (cmd == "status") {
      std::cout << "node " << s.node_id() << (s.in_group() ? "" : " (not in a group yet)") << ", epoch " << s.epoch()
                << ", " << s.members_size() << " members, uptime " << s.uptime_ms() / 1000 << " s\n"
                << "replication backlog " << s.replication_backlog() << ", reports owed " << s.pending_reports()
                << ", records " << s.records() << ", buckets not ready here " << s.buckets_not_ready() << "\n"
                << "sync: " << s.sync_users_pulled() << " users pulled, " << s.sync_bodies_copied()
                << " bodies copied here, " << s.sync_bodies_pending() << " pending; " << s.unindexed_bodies()
                << " bodies named by no record\n";
      if (s.cache_budget() > 0)
        std::cout << "cache: " << s.cache_bytes() / 1024 << " KiB of " << s.cache_budget() / 1024 << " KiB, "
                  << s.cache_entries() << " bodies; " << s.cache_hits() << " hits, " << s.cache_misses()
                  << " misses, " << s.cache_evictions() << " evicted, " << s.cache_refused() << " refused\n";
      if (!s.store_damage().empty())
        std::cout << "STORE DAMAGE found at start: " << s.store_damage() << "\n";
      bool leaving = false;
      for (const auto& a : s.admin()) leaving |= a.state() != "active";
      if (leaving || s.repair_copies() > 0)
        std::cout << "repair: " << s.repair_pending() << " messages led here still to copy (" << s.repair_inflight()
                  << " on their way), " << s.repair_copies() << " copies made (" << s.repair_bytes() / 1024
                  << " KiB), " << s.repair_profiles() << " profiles moved, " << s.repair_passes() << " passes\n";
      if (s.admin_state() != "active")
        std::cout << "this node is " << s.admin_state() << ": " << s.drain_messages() << " messages ("
                  << s.drain_bytes() / 1024 << " KiB), " << s.drain_profiles() << " profiles and "
                  << s.drain_buckets() << " buckets still here"
                  << (s.drain_messages() + s.drain_profiles() + s.drain_buckets() == 0 ? ": drained, may be stopped"
                                                                                         : "")
                  << "\n";
    }
    if (cmd != "buckets") {
      std::map<std::uint32_t, std::string> told;  // draining, gone
      for (const auto& a : s.admin())
        if (a.state() != "active") told[a.node()] = a.state();
      std::cout << std::left << std::setw(6) << "node" << std::setw(24) << "address" << std::setw(20) << "state"
                << std::setw(7) << "load" << std::setw(8) << "weight" << "buckets\n";
      for (const auto& m : s.members()) {
        std::string state = !m.connected() ? "unreachable" : m.full() ? "up, full" : "up";
        if (told.count(m.id())) state += ", " + told[m.id()];
        std::cout << std::setw(6) << m.id() << std::setw(24) << m.address() << std::setw(20) << state << std::setw(7)
                  << m.load() << std::setw(8) << m.weight() << m.buckets() << "\n";
      }
      for (auto k : s.known())
        std::cout << std::setw(6) << k << std::setw(24) << "" << "not a member"
                  << (told.count(k) ? ", " + told[k] : "") << "\n";
      for (const auto& [k, st] : told)
        if (st == "gone") std::cout << std::setw(6) << k << std::setw(24) << "" << "gone (forgotten)\n";
    } else {
      for (const auto& m : s.members())
        std::cout << "node " << m.id() << ": " << m.buckets() << " of " << s.buckets() << " buckets\n";
    }
    return 0;
  }

  if (cmd == "drain" || cmd == "undrain" || (cmd == "node" && need(2) && args[1] == "forget")) {
    bool forget = cmd == "node";
    std::size_t at = forget ? 2 : 1;
    if (!need(at + 1)) return usage();
    std::uint32_t node = 0;
    if (!number(args[at], node, "node id")) return kUsage;
    pb::Request r;
    auto* a = r.mutable_node_admin();
    a->set_node(node);
    a->set_state(forget ? pb::NodeAdmin::GONE : cmd == "drain" ? pb::NodeAdmin::DRAIN : pb::NodeAdmin::ACTIVE);
    if (!ctl.call(r, status)) return status;
    if (!ctl.as_json)
      std::cout << (forget ? "node " + args[at] + " forgotten: what it held is being copied to other nodes\n"
                    : cmd == "drain"
                        ? "node " + args[at] + " draining: porcupinectl status on it shows what is left\n"
                        : "node " + args[at] + " active again\n");
    return 0;
  }

  if (cmd == "user") {
    if (!need(2)) return usage();
    const std::string sub = args[1];
    pb::Request r;
    if (sub == "list") {
      r.mutable_user_list();
      auto resp = ctl.call(r, status);
      if (!resp) return status;
      if (ctl.as_json) std::cout << json(std::vector<std::string>(resp->users().begin(), resp->users().end())).dump(2) << "\n";
      else for (const auto& u : resp->users()) std::cout << u << "\n";
      return 0;
    }
    if (!need(3)) return usage();
    const std::string who = args[2];
    if (sub == "add" || sub == "passwd") {
      std::string hash = password_hash;
      if (hash.empty() && !password.empty()) hash = hash_password(password);
      if (hash.empty()) {
        std::cerr << "porcupinectl: give --password, --password-stdin or --password-hash\n";
        return kUsage;
      }
      if (sub == "add") {
        r.mutable_user_create()->set_user(who);
        r.mutable_user_create()->set_password_hash(hash);
      } else {
        r.mutable_user_change()->set_user(who);
        r.mutable_user_change()->set_op(pb::UserChange::SET_PASSWORD);
        r.mutable_user_change()->set_password_hash(hash);
      }
      if (!ctl.call(r, status)) return status;
      if (sub == "add" && quota > 0) {
        pb::Request q;
        q.mutable_user_change()->set_user(who);
        q.mutable_user_change()->set_op(pb::UserChange::SET_QUOTA);
        q.mutable_user_change()->set_quota_bytes(quota);
        if (!ctl.call(q, status)) return status;
      }
      if (!ctl.as_json) std::cout << (sub == "add" ? "added " : "password changed for ") << who << "\n";
      return 0;
    }
    static const std::map<std::string, pb::UserChange::Op> changes = {
        {"del", pb::UserChange::DELETE}, {"enable", pb::UserChange::ENABLE},
        {"disable", pb::UserChange::DISABLE}, {"quota", pb::UserChange::SET_QUOTA}};
    if (auto c = changes.find(sub); c != changes.end()) {
      r.mutable_user_change()->set_user(who);
      r.mutable_user_change()->set_op(c->second);
      if (sub == "quota") {
        if (!need(4)) return usage();
        std::uint64_t bytes = 0;
        if (!number(args[3], bytes, "BYTES")) return kUsage;
        r.mutable_user_change()->set_quota_bytes(bytes);
      }
      if (!ctl.call(r, status)) return status;
      if (!ctl.as_json) std::cout << sub << " " << who << ": done\n";
      return 0;
    }
    if (sub == "show") {
      r.mutable_user_get()->set_user(who);
      r.mutable_user_get()->set_with_usage(true);
      auto resp = ctl.call(r, status);
      if (!resp) return status;
      const auto& u = resp->user();
      json holders = json::array();
      for (auto h : u.holders()) holders.push_back(h);
      json j = {{"user", u.user()}, {"quota_bytes", u.quota_bytes()}, {"used_bytes", u.used_bytes()},
                {"enabled", u.enabled()}, {"profile_replicas", holders}, {"manager", u.manager()}};
      if (ctl.as_json) std::cout << j.dump(2) << "\n";
      else std::cout << u.user() << ": " << (u.enabled() ? "enabled" : "disabled") << ", "
                     << u.used_bytes() << " bytes used, quota "
                     << (u.quota_bytes() ? std::to_string(u.quota_bytes()) + " bytes" : "none")
                     << ", profile on nodes " << holders.dump() << ", managed by node " << u.manager() << "\n";
      return 0;
    }
    if (sub == "auth") {
      r.mutable_user_auth()->set_user(who);
      r.mutable_user_auth()->set_password(password);
      if (!ctl.call(r, status)) return status;
      if (!ctl.as_json) std::cout << "authenticated " << who << "\n";
      return 0;
    }
    return usage();
  }

  if (cmd == "folder") {
    if (!need(3)) return usage();
    const std::string sub = args[1], who = args[2];
    pb::Request r;
    if (sub == "list") {
      r.mutable_folders()->set_user(who);
      auto resp = ctl.call(r, status);
      if (!resp) return status;
      std::vector<std::string> names(resp->folders().begin(), resp->folders().end());
      if (ctl.as_json) std::cout << json(names).dump(2) << "\n";
      else for (const auto& n : names) std::cout << n << "\n";
      return 0;
    }
    if (!need(4)) return usage();
    if (sub == "create") {
      r.mutable_folder_create()->set_user(who);
      r.mutable_folder_create()->set_folder(args[3]);
    } else if (sub == "delete") {
      r.mutable_folder_delete()->set_user(who);
      r.mutable_folder_delete()->set_folder(args[3]);
    } else if (sub == "rename") {
      if (!need(5)) return usage();
      r.mutable_folder_rename()->set_user(who);
      r.mutable_folder_rename()->set_from(args[3]);
      r.mutable_folder_rename()->set_to(args[4]);
    } else {
      return usage();
    }
    if (!ctl.call(r, status)) return status;
    if (!ctl.as_json) std::cout << "folder " << sub << ": done\n";
    return 0;
  }

  if (cmd == "mail") {
    if (!need(3)) return usage();
    const std::string sub = args[1];
    if (sub == "deliver") {
      std::vector<std::string> rcpts(args.begin() + 2, args.end());
      auto resp = ctl.client.deliver(rcpts, folder, std::cin);
      if (!resp) {
        std::cerr << "porcupinectl: " << ctl.client.error() << "\n";
        return kUnreachable;
      }
      json out = json::array();
      for (const auto& d : resp->delivered()) {
        json j = {{"recipient", d.recipient()}, {"code", porcupine::client::code_name(d.code())}, {"detail", d.detail()}};
        if (d.code() == pb::OK) {
          j["uid"] = d.message().uid();
          j["uidvalidity"] = d.uidvalidity();
          j["id"] = std::to_string(d.message().ref().origin()) + ":" + std::to_string(d.message().ref().seq());
        }
        out.push_back(j);
        if (!ctl.as_json)
          std::cout << d.recipient() << ": " << porcupine::client::code_name(d.code())
                    << (d.code() == pb::OK ? " uid " + std::to_string(d.message().uid()) : " " + d.detail()) << "\n";
      }
      if (resp->delivered_size() == 0)
        std::cerr << "porcupinectl: " << porcupine::client::code_name(resp->code()) << ": " << resp->detail() << "\n";
      if (ctl.as_json) std::cout << out.dump(2) << "\n";
      return ctl.exit_for(resp->code());
    }
    pb::Request l;
    l.mutable_folder_list()->set_user(args[2]);
    l.mutable_folder_list()->set_folder(folder);
    auto listing = ctl.call(l, status);
    if (!listing) return status;
    if (sub == "list") {
      if (ctl.as_json) {
        json j = {{"uidvalidity", listing->uidvalidity()}, {"next_uid", listing->next_uid()}, {"messages", json::array()}};
        for (const auto& m : listing->messages()) j["messages"].push_back(message_json(m));
        std::cout << j.dump(2) << "\n";
      } else {
        std::cout << args[2] << "/" << folder << ": UIDVALIDITY " << listing->uidvalidity() << ", next UID "
                  << listing->next_uid() << ", " << listing->messages_size() << " messages\n";
        for (const auto& m : listing->messages())
          std::cout << std::setw(8) << m.uid() << std::setw(10) << m.size() << "  " << flags_text(m.flags()) << "\n";
      }
      return 0;
    }
    if (!need(4)) return usage();
    std::uint32_t uid = 0;
    if (!number(args[3], uid, "UID")) return kUsage;
    const pb::MessageInfo* msg = nullptr;
    for (const auto& m : listing->messages())
      if (m.uid() == uid) msg = &m;
    if (!msg) {
      std::cerr << "porcupinectl: no message with UID " << uid << " in " << args[2] << "/" << folder << "\n";
      return kRefused;
    }
    // A listing's references leave out the user and folder: the request's.
    pb::MessageRef ref = msg->ref();
    ref.set_user(args[2]);
    ref.set_folder(folder);
    pb::Request r;
    if (sub == "fetch") {
      *r.mutable_fetch()->mutable_ref() = ref;
      auto resp = ctl.call(r, status);
      if (!resp) return status;
      std::cout << resp->body();
      return 0;
    }
    if (sub == "flags") {
      if (!need(5)) return usage();
      std::uint32_t f = 0;
      std::vector<std::string> kws;
      if (!parse_flags(args[4], f, kws)) {
        std::cerr << "porcupinectl: flags are seen,answered,flagged,deleted,draft, none, or keywords\n";
        return kUsage;
      }
      *r.mutable_set_flags()->mutable_ref() = ref;
      r.mutable_set_flags()->set_flags(f);
      for (const auto& k : kws) r.mutable_set_flags()->add_keywords(k);
    } else if (sub == "expunge") {
      *r.mutable_expunge()->mutable_ref() = ref;
    } else if (sub == "move") {
      if (!need(5)) return usage();
      *r.mutable_move()->mutable_ref() = ref;
      r.mutable_move()->set_to_folder(args[4]);
    } else {
      return usage();
    }
    if (!ctl.call(r, status)) return status;
    return 0;
  }
  return usage();
}
