// SPDX-License-Identifier: MIT
// users.cc - the cluster's user database: each user's profile (password
// hash, quota, enabled, folders) is hard state replicated like mail, and
// the user's manager answers for it (ARCHITECTURE.md 3). Front-end
// (FrontEnd, frontend.h) and manager (Manager, manager.h) sides of lookup,
// change and listing.
//
// A deleted user keeps a tombstone profile (deleted = true, newer
// version), so a replica that was down cannot bring the user back.
#include <algorithm>

#include "frontend.h"
#include "hash.h"
#include "manager.h"

namespace porcupine {

std::uint64_t FrontEnd::start(Time now, Pending::Op op, std::uint64_t req, const std::string& user) {
  std::uint64_t id = hooks_.new_req();
  Pending& p = pending_[id];
  p.op = std::move(op);
  p.client_req = req;
  p.deadline = now + cfg_.request_timeout;
  p.user = canonical_user(user);
  p.retry_at = now;
  return id;
}

void FrontEnd::get_user(Time now, std::uint64_t req, const std::string& user) {
  start(now, ProfileOp{}, req, user);
  tick(now);
}

void FrontEnd::update_user(Time now, std::uint64_t req, const UserUpdateRequest& change) {
  std::uint64_t id = start(now, UserUpdateOp{change}, req, change.user);
  Pending& p = pending_[id];
  std::get<UserUpdateOp>(p.op).change.user = p.user;
  tick(now);
}

void FrontEnd::list_users(Time now, std::uint64_t req) {
  std::uint64_t id = start(now, UserListOp{}, req, "");
  auto& awaiting = std::get<UserListOp>(pending_[id].op).awaiting;
  for (const auto& m : membership_.members()) awaiting.insert(m.id);
  if (awaiting.empty()) {
    fail(id, Status::TryAgain, "not in a group yet");
    return;
  }
  tick(now);
}

bool FrontEnd::user_reply(NodeId from, const Message& m) {
  if (const auto* r = std::get_if<ProfileReply>(&m)) {
    Pending* p = pending_as<ProfileOp>(r->req).first;
    if (!p) return true;
    if (r->status == Status::Ok) {
      remember_profile(r->profile);
      ClientReply out;
      out.req = p->client_req;
      out.profile = r->profile;
      out.manager = from;
      if (r->has_usage) out.used_bytes = r->used_bytes;
      pending_.erase(r->req);
      hooks_.reply(std::move(out));
    } else if (r->status == Status::NoSuchUser) {
      forget_profile(p->user);
      fail(r->req, Status::NoSuchUser, "no such user");
    } else {
      p->retry_at = hooks_.now() + 200;  // not ready, not the manager: ask again
      // The profile's holders may be out of reach: asked again with what
      // this node remembers of it.
      if (r->status == Status::TryAgain) std::get<ProfileOp>(p->op).offer = true;
    }
    return true;
  }
  if (const auto* r = std::get_if<UserListReply>(&m)) {
    auto [p, list] = pending_as<UserListOp>(r->req);
    if (!p || !list->awaiting.count(from)) return true;
    if (r->status != Status::Ok) return true;  // asked again on retry
    list->awaiting.erase(from);
    list->users.insert(r->users.begin(), r->users.end());
    if (list->awaiting.empty()) {
      ClientReply out;
      out.req = p->client_req;
      out.users.assign(list->users.begin(), list->users.end());
      pending_.erase(r->req);
      hooks_.reply(std::move(out));
    }
    return true;
  }
  if (const auto* o = std::get_if<OpReply>(&m)) {
    Pending* p = pending_as<UserUpdateOp>(o->req).first;
    if (!p) return false;  // someone else's OpReply
    if (o->status == Status::Ok) {
      ClientReply out;
      out.req = p->client_req;
      pending_.erase(o->req);
      hooks_.reply(std::move(out));
    } else if (o->status == Status::NoSuchUser) {
      fail(o->req, Status::NoSuchUser, "no such user");
    } else if (o->status == Status::Exists || o->status == Status::NotFound || o->status == Status::Failed) {
      fail(o->req, o->status,
           o->status == Status::Exists ? "folder exists"
           : o->status == Status::NotFound ? "no such folder"
                                           : "that folder cannot be created or deleted");
    } else {
      p->retry_at = hooks_.now() + 200;
    }
    return true;
  }
  return false;
}

void FrontEnd::remember_profile(const Profile& p) {
  if (cfg_.profile_memory_users == 0 || p.user.empty() || p.deleted) return;
  auto [it, added] = remembered_.try_emplace(p.user);
  if (!added) remembered_order_.erase(it->second.order);
  it->second.profile = p;
  it->second.order = remembered_order_.emplace(hooks_.now(), p.user);
  while (remembered_.size() > cfg_.profile_memory_users) {
    remembered_.erase(remembered_order_.begin()->second);
    remembered_order_.erase(remembered_order_.begin());
  }
}

void FrontEnd::forget_profile(const std::string& user) {
  auto it = remembered_.find(user);
  if (it == remembered_.end()) return;
  remembered_order_.erase(it->second.order);
  remembered_.erase(it);
}

const Profile* FrontEnd::remembered_profile(const std::string& user) const {
  auto it = remembered_.find(user);
  if (it == remembered_.end() || hooks_.now() - it->second.order->first > cfg_.profile_memory_ttl) return nullptr;
  return &it->second.profile;
}

void FrontEnd::offer_profile(const std::string& user) {
  const Profile* p = remembered_profile(user);
  NodeId mgr = membership_.manager_of(bucket(user));
  if (!p || mgr == kNoNode) return;
  send(mgr, ProfileRequest{0, user, *p});  // its answer matches no request
}

const Manager::User* Manager::adopt(Bucket b, NodeId from, const Profile& p) {
  User* u = managed_user(p.user);
  if ((u && u->profile) || p.deleted || p.holders.empty() || missing_user_status(b, u) != Status::TryAgain)
    return nullptr;
  for (NodeId h : p.holders)
    if (hooks_.live(h)) return nullptr;  // its report is on its way
  User& mu = managed_[b][p.user];
  mu.profile = p;
  mu.adopted = true;
  hooks_.log("manager: " + printable(p.user) + ": no holder of its profile is live; node " + std::to_string(from) +
             "'s last copy (" + p.version.str() + ") answers until one reports");
  return &mu;
}

// A deleted profile is a known answer. No profile at all is one only while
// every node this one knows of is in the group: mail without a profile, or
// a known node that is down, means the profile's holders may be out of
// reach, and "no such user" would make an SMTP server bounce (5xx) mail
// for a real user. So the answer is to try again.
Status Manager::missing_user_status(Bucket b, const User* u) const {
  if (u && u->profile) return Status::NoSuchUser;  // deleted
  if (u && !u->folders.empty()) return Status::TryAgain;
  // A member that has not reported the bucket yet (one just back) may hold
  // the profile.
  if (expected_.count(b)) return Status::TryAgain;
  for (NodeId n : membership_.known())
    if (!hooks_.live(n)) return Status::TryAgain;
  return Status::NoSuchUser;
}

void Manager::on_profile(Time now, NodeId from, const ProfileRequest& r) {
  ProfileReply rep;
  rep.req = r.req;
  Bucket b = bucket(r.user);
  if (!membership_.in_group() || membership_.manager_of(b) != cfg_.self) {
    rep.status = Status::NotManager;
  } else if (!bucket_ready(b)) {
    rep.status = Status::TryAgain;
  } else {
    const User* u = managed_user(r.user);
    if ((!u || !u->profile) && r.remembered && r.remembered->user == r.user)
      if (const User* a = adopt(b, from, *r.remembered)) u = a;
    if (!u || !u->profile || u->profile->deleted) {
      rep.status = missing_user_status(b, u);
      // A deleted user's tombstone goes along (a draining holder of an old
      // copy learns from it that it holds it no more; repair.cc).
      if (u && u->profile) rep.profile = *u->profile;
    } else {
      rep.profile = *u->profile;
      // The usage too, once this manager can count it (the milter's RCPT
      // check and `user show` then ask no other node).
      if (auto used = managed_usage(r.user, now)) {
        rep.has_usage = true;
        rep.used_bytes = *used;
      }
    }
  }
  hooks_.send(from, std::move(rep));
}

void Manager::on_user_update(Time now, NodeId from, const UserUpdateRequest& r) {
  OpReply rep{r.req, Status::Ok, {}};
  Bucket b = bucket(r.user);
  User* u = managed_user(r.user);
  if (!membership_.in_group() || membership_.manager_of(b) != cfg_.self) {
    rep.status = Status::NotManager;
  } else if (!bucket_ready(b)) {
    rep.status = Status::TryAgain;
  } else if (!u || !u->profile || u->profile->deleted) {
    rep.status = missing_user_status(b, u);
  } else if (u->adopted) {
    rep.status = Status::TryAgain;  // a change waits for the profile's holders
  } else {
    Profile& p = *u->profile;
    switch (r.op) {
      case UserUpdateRequest::Op::SetPassword: p.password_hash = r.password_hash; break;
      case UserUpdateRequest::Op::SetQuota: p.quota_bytes = r.quota_bytes; break;
      case UserUpdateRequest::Op::Enable: p.enabled = true; break;
      case UserUpdateRequest::Op::Disable: p.enabled = false; break;
      case UserUpdateRequest::Op::Delete: p.deleted = true; break;
      case UserUpdateRequest::Op::RenameFolder:
        rep.status = rename_folder(now, r, *u);
        break;
      case UserUpdateRequest::Op::Subscribe:
      case UserUpdateRequest::Op::Unsubscribe:
        if (r.folder.empty()) {
          rep.status = Status::Failed;
        } else {
          p.subscriptions[r.folder] = Subscription{r.op == UserUpdateRequest::Op::Subscribe, hooks_.next_version()};
        }
        break;
      case UserUpdateRequest::Op::CreateFolder:
      case UserUpdateRequest::Op::DeleteFolder: {
        bool create = r.op == UserUpdateRequest::Op::CreateFolder;
        auto f = p.folders.find(r.folder);
        bool exists = r.folder == "INBOX" || (f != p.folders.end() && !f->second.deleted);
        if (r.folder.empty() || (!create && r.folder == "INBOX")) {
          rep.status = Status::Failed;
        } else if (create == exists) {
          rep.status = create ? Status::Exists : Status::NotFound;
        } else {
          FolderMeta& m = p.folders[r.folder];
          m.version = hooks_.next_version();
          m.deleted = !create;
          m.renamed_to.clear();
          if (create) {
            // A new lineage, above the one a deleted folder of that name had.
            m.uidvalidity = fresh_uidvalidity(m.uidvalidity);
            m.uid_reserved = 0;
            m.takeovers.clear();
          }
          // The manager's state of the folder follows the profile's.
          u->folders.erase(r.folder);
        }
        break;
      }
    }
    if (rep.status == Status::Ok && r.op != UserUpdateRequest::Op::RenameFolder) {
      p.version = hooks_.next_version();
      write_profile(now, *u);
    }
  }
  hooks_.send(from, rep);
}

// RENAME of a folder other than INBOX: the new name takes the folder's
// lineage (UIDVALIDITY, reserved UIDs, takeovers) and the manager's state
// of it; the old name stays as a tombstone. Then every message is moved
// over under its UID (start_rename). Answered TryAgain until that is done
// (the front end asks again), then Ok.
Status Manager::rename_folder(Time now, const UserUpdateRequest& r, User& u) {
  Profile& p = *u.profile;
  if (r.folder.empty() || r.to_folder.empty() || r.folder == "INBOX" || r.to_folder == "INBOX" ||
      r.folder == r.to_folder)
    return Status::Failed;
  auto from = p.folders.find(r.folder);
  auto to = p.folders.find(r.to_folder);
  const bool from_exists = from != p.folders.end() && !from->second.deleted;
  const bool to_exists = to != p.folders.end() && !to->second.deleted;
  if (!from_exists && to_exists && from != p.folders.end() && from->second.uidvalidity != 0 &&
      to->second.uidvalidity == from->second.uidvalidity) {
    // Renamed already (this is the front end asking again).
    auto f = u.folders.find(r.to_folder);
    return f != u.folders.end() && !f->second.renamed_from.empty() ? Status::TryAgain : Status::Ok;
  }
  if (!from_exists) return Status::NotFound;
  if (to_exists) return Status::Exists;
  if (from->second.uidvalidity == 0) lineage_meta(now, u, r.folder, true);  // a folder never used
  FolderMeta moved = p.folders[r.folder];
  moved.version = hooks_.next_version();
  moved.deleted = false;
  p.folders[r.to_folder] = moved;
  FolderMeta& old = p.folders[r.folder];
  old.version = hooks_.next_version();
  old.deleted = true;  // keeps its UIDVALIDITY: a folder made again under the name gets a greater one
  old.renamed_to = r.to_folder;  // so a successor can finish moving its mail
  p.version = hooks_.next_version();
  write_profile(now, u);
  Folder mf;
  if (auto f = u.folders.find(r.folder); f != u.folders.end()) {
    mf = std::move(f->second);
    u.folders.erase(f);
  }
  mf.renamed_from = r.folder;
  mf.renumber_due = false;
  mf.renumber_running = false;
  u.folders[r.to_folder] = std::move(mf);
  renames_due_.insert({p.user, r.to_folder});
  hooks_.log("manager: " + p.user + "/" + r.folder + " renamed " + r.to_folder + ": moving its messages");
  return Status::TryAgain;
}

void Manager::on_user_list(NodeId from, const UserListRequest& r) {
  UserListReply rep;
  rep.req = r.req;
  for (Bucket b = 0; b < membership_.map().size() && rep.status == Status::Ok; ++b) {
    if (membership_.manager_of(b) != cfg_.self) continue;
    if (!bucket_ready(b)) {
      rep.status = Status::TryAgain;
      break;
    }
    if (auto m = managed_.find(b); m != managed_.end())
      for (const auto& [name, u] : m->second)
        if (u.profile && !u.profile->deleted) rep.users.push_back(name);
  }
  if (!membership_.in_group()) rep.status = Status::NotManager;
  if (rep.status != Status::Ok) rep.users.clear();
  hooks_.send(from, std::move(rep));
}

}  // namespace porcupine
