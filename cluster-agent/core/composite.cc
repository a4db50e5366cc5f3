// SPDX-License-Identifier: MIT
// composite.cc - operations made of several of the node's own: a delivery
// to several recipients, a folder's deletion and INBOX's rename, a user
// lookup with the user's usage, and a password check. Each step is an
// operation of this node whose reply comes back to a continuation
// (Node::step) at the end of the call that gave it, so a step never runs
// inside another.
#include <algorithm>

#include "hash.h"
#include "node.h"
#include "password.h"

namespace porcupine {

void Node::relay(std::uint64_t req, const ClientReply& c) {
  ClientReply out;
  out.req = req;
  out.status = c.status;
  out.detail = c.detail;
  reply(std::move(out));
}

// ---- delivery to several recipients ---------------------------------------

struct Node::Fanout {
  std::uint64_t req = 0;
  std::vector<std::string> recipients;
  std::string folder;
  Body body;
  DeliverOptions opts;
  std::vector<Delivered> done;
};

void Node::deliver_all(Time now, std::uint64_t req, const std::vector<std::string>& recipients,
                       const std::string& folder, Body body, DeliverOptions opts) {
  Entry entry(*this, now);
  auto f = std::make_shared<Fanout>();
  f->req = req;
  f->recipients = recipients;
  f->folder = folder;
  f->body = std::move(body);
  f->opts = std::move(opts);
  deliver_next(f);
}

void Node::deliver_next(const std::shared_ptr<Fanout>& f) {
  const std::size_t i = f->done.size();
  if (i == f->recipients.size()) {
    ClientReply out;
    out.req = f->req;
    for (const Delivered& d : f->done)
      if (d.status != Status::Ok &&
          (out.status == Status::Ok || d.status == Status::TryAgain || d.status == Status::NotManager)) {
        out.status = d.status;
        out.detail = d.detail;
      }
    if (f->done.empty()) {
      out.status = Status::Failed;
      out.detail = "no recipient";
    }
    out.delivered = std::move(f->done);
    reply(std::move(out));
    return;
  }
  // A body in a file is shared, one in memory copied: the last recipient
  // takes it.
  Body body = i + 1 == f->recipients.size() ? std::move(f->body) : f->body;
  const std::string& rcpt = f->recipients[i];
  deliver(now_, step([this, f, rcpt](ClientReply& c) {
            Delivered d;
            d.recipient = rcpt;
            d.user = canonical_user(rcpt);
            d.status = c.status;
            d.detail = std::move(c.detail);
            if (c.status == Status::Ok) {
              d.msg = c.msg;
              d.uidvalidity = c.uidvalidity;
              d.uid = c.uid;
              d.replicas = std::move(c.replicas);
            }
            f->done.push_back(std::move(d));
            deliver_next(f);
          }),
          rcpt, f->folder, std::move(body), f->opts);
}

// ---- a folder's messages, one after another ------------------------------

void Node::for_each_message(std::uint64_t req, const std::string& user, const std::string& folder, PerMessage each,
                            Last last) {
  list(now_, step([this, req, each = std::move(each), last = std::move(last)](ClientReply& c) {
         if (c.status != Status::Ok) return relay(req, c);
         auto msgs = std::make_shared<std::vector<MessageRecord>>(std::move(c.records));
         step_messages(req, msgs, 0, each, last);
       }),
       user, folder);
}

void Node::step_messages(std::uint64_t req, std::shared_ptr<std::vector<MessageRecord>> msgs, std::size_t i,
                         PerMessage each, Last last) {
  if (i == msgs->size()) {
    if (last) return last(step([this, req](ClientReply& c) { relay(req, c); }));
    ClientReply out;
    out.req = req;
    return reply(std::move(out));
  }
  const std::uint64_t sub = step([this, req, msgs, i, each, last](ClientReply& c) {
    if (c.status != Status::Ok) return relay(req, c);
    step_messages(req, msgs, i + 1, each, last);
  });
  each(sub, (*msgs)[i]);
}

namespace {
UserUpdateRequest folder_change(const std::string& user, const std::string& folder, UserUpdateRequest::Op op) {
  UserUpdateRequest u;
  u.user = user;
  u.folder = folder;
  u.op = op;
  return u;
}
}  // namespace

void Node::delete_folder(Time now, std::uint64_t req, const std::string& user, const std::string& folder) {
  Entry entry(*this, now);
  // Its messages first, then the folder: a folder deleted first would
  // leave its messages where no listing shows them.
  for_each_message(
      req, user, folder, [this](std::uint64_t sub, const MessageRecord& m) { expunge(now_, sub, m); },
      [this, user, folder](std::uint64_t sub) {
        update_user(now_, sub, folder_change(user, folder, UserUpdateRequest::Op::DeleteFolder));
      });
}

void Node::rename_folder(Time now, std::uint64_t req, const std::string& user, const std::string& from,
                         const std::string& to) {
  Entry entry(*this, now);
  if (from != "INBOX") {
    // The folder keeps its UIDVALIDITY and every message its UID.
    UserUpdateRequest u = folder_change(user, from, UserUpdateRequest::Op::RenameFolder);
    u.to_folder = to;
    return update_user(now, req, u);
  }
  // INBOX stays, emptied: its messages move to the new folder.
  update_user(now, step([this, req, user, to](ClientReply& c) {
                if (c.status != Status::Ok) return relay(req, c);
                for_each_message(
                    req, user, "INBOX",
                    [this, to](std::uint64_t sub, const MessageRecord& m) { move(now_, sub, m, to); }, nullptr);
              }),
              folder_change(user, to, UserUpdateRequest::Op::CreateFolder));
}

// ---- users ----------------------------------------------------------------

void Node::lookup_user(Time now, std::uint64_t req, const std::string& user, bool with_usage) {
  Entry entry(*this, now);
  get_user(now, step([this, req, with_usage](ClientReply& c) {
             c.req = req;
             if (c.status != Status::Ok) return relay(req, c);
             c.profile->password_hash.clear();  // never leaves the node: authenticate checks passwords
             if (c.profile->quota_bytes == 0 && !with_usage) {
               c.used_bytes.reset();
               return reply(std::move(c));
             }
             if (c.used_bytes) return reply(std::move(c));  // counted by the manager
             // Not yet (a member has still to report to a new manager):
             // gathered from every node.
             auto found = std::make_shared<ClientReply>(std::move(c));
             user_usage(now_, step([this, found](ClientReply& u) {
                          if (u.status != Status::Ok) return relay(found->req, u);
                          found->used_bytes = u.used_bytes.value_or(0);
                          reply(std::move(*found));
                        }),
                        found->profile->user);
           }),
           user);
}

void Node::authenticate(Time now, std::uint64_t req, const std::string& user, const std::string& password) {
  Entry entry(*this, now);
  if (!auth_throttle_.allowed(user, now_)) {
    ClientReply out;
    out.req = req;
    out.status = Status::TryAgain;
    out.detail = "too many failed logins for this user; try later";
    return reply(std::move(out));
  }
  get_user(now, step([this, req, user, password](ClientReply& c) {
             ClientReply out;
             out.req = req;
             if (c.status != Status::Ok) return relay(req, c);
             if (!c.profile->enabled) {
               out.status = Status::AuthFailed;
               out.detail = "user disabled";
             } else if (!password_matches(c.profile->password_hash, password)) {
               out.status = Status::AuthFailed;
               out.detail = "password mismatch";
               if (auth_throttle_.failed(user, now_))
                 env_.log("warning: " + printable(user) +
                          ": too many failed logins; its checks wait for auth_failure_window_ms");
             } else {
               c.profile->password_hash.clear();  // never leaves the node
               out.profile = std::move(c.profile);
               out.manager = c.manager;
             }
             reply(std::move(out));
           }),
           user);
}

}  // namespace porcupine
