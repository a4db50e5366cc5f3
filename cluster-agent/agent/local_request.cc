// SPDX-License-Identifier: MIT
// local_request.cc - see local_request.h.
#include "agent/local_request.h"

#include <limits>

#include "core/hash.h"
#include "core/records.h"

namespace porcupine::agent {

namespace pb = agentpb;

namespace {

// An IMAP keyword (RFC 3501 flag-keyword: an atom, no backslash; at most
// 128 bytes here), at most kMaxKeywords per message.
constexpr int kMaxKeywords = 64;
bool valid_keyword(const std::string& k) {
  if (k.empty() || k.size() > 128) return false;
  for (unsigned char c : k)
    if (c <= 0x20 || c >= 0x7f || std::string_view("(){%*\"\\]").find(static_cast<char>(c)) != std::string_view::npos)
      return false;
  return true;
}
// What is wrong with a request's keywords, if anything.
std::optional<std::string> keyword_problem(const google::protobuf::RepeatedPtrField<std::string>& kws) {
  if (kws.size() > kMaxKeywords) return "more than 64 keywords";
  for (const auto& k : kws)
    if (!valid_keyword(k)) return "not an IMAP keyword: " + printable(k);
  return std::nullopt;
}

// Messages in one Open: each answer's descriptor goes in one frame, and a
// frame carries at most SCM_MAX_FD (253) of them.
constexpr int kMaxOpen = 128;

// A message reference that names the message and where its copies are.
bool complete(const pb::MessageRef& r) { return r.origin() != 0 && !r.replicas().empty(); }

std::optional<std::string> folder_problem(const std::string& name) {
  if (auto why = folder_name_problem(name); !why.empty()) return why;
  return std::nullopt;
}

}  // namespace

bool decode_request(std::string_view bytes, pb::Request& out) {
  return bytes.size() <= static_cast<std::size_t>(std::numeric_limits<int>::max()) &&
         out.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()));
}

bool administers(const pb::Request& q) {
  switch (q.op_case()) {
    case pb::Request::kUserCreate:
    case pb::Request::kUserChange:
    case pb::Request::kUserList:
    case pb::Request::kNodeAdmin:
      return true;
    default:
      return false;
  }
}

std::optional<std::string> request_problem(const pb::Request& q) {
  switch (q.op_case()) {
    case pb::Request::kUserGet:
      if (q.user_get().user().empty()) return "user is empty";
      return std::nullopt;
    case pb::Request::kUserAuth:
      if (q.user_auth().user().empty()) return "user is empty";
      return std::nullopt;
    case pb::Request::kUserCreate: {
      // The cluster keeps the user under canonical_user(name), and finds it
      // under canonical_user of the name asked for: a name whose canonical
      // form is not its own (`< bob@example.org>`, `<<bob@example.org>>`)
      // would be listed under a name that finds nothing.
      const std::string& u = q.user_create().user();
      const std::string kept = canonical_user(u);
      if (u.empty() || u.find('@') == std::string::npos || canonical_user(kept) != kept)
        return "user must be an address (local@domain)";
      return std::nullopt;
    }
    case pb::Request::kUserChange:
      if (q.user_change().user().empty()) return "user is empty";
      if (!pb::UserChange_Op_IsValid(q.user_change().op())) return "unknown change";
      return std::nullopt;
    case pb::Request::kUserList:
      return std::nullopt;
    case pb::Request::kDeliverBegin: {
      const auto& b = q.deliver_begin();
      if (b.recipients().empty()) return "no recipients";
      if (auto why = folder_problem(b.folder().empty() ? "INBOX" : b.folder())) return why;
      if (b.internal_date_ms() < 0) return "internal date before 1970";
      if (b.delivery_key().size() > kMaxDeliveryKey) return "delivery key over 64 bytes";
      return keyword_problem(b.keywords());
    }
    case pb::Request::kDeliverChunk:  // its delivery was checked at DeliverBegin
      return std::nullopt;
    case pb::Request::kFolderList:
      if (q.folder_list().user().empty()) return "user is empty";
      return std::nullopt;
    case pb::Request::kFetch:
      if (q.fetch().ref().origin() == 0) return "message reference is empty";
      return std::nullopt;
    case pb::Request::kOpen: {
      const auto& o = q.open();
      if (o.refs().empty()) return "no message references";
      if (o.refs_size() > kMaxOpen) return "more than " + std::to_string(kMaxOpen) + " messages in one Open";
      if (o.part() != pb::Open::WHOLE && o.part() != pb::Open::HEADER) return "unknown part";
      if (!o.pass_fds()) return "Open answers with file descriptors only: set pass_fds";
      // One user's messages: the descriptors go to a reader acting for one user.
      const std::string user = canonical_user(o.refs(0).user());
      if (user.empty()) return "user is empty";
      for (const auto& r : o.refs()) {
        if (r.origin() == 0) return "message reference is empty";
        if (canonical_user(r.user()) != user) return "an Open names one user's messages";
      }
      return std::nullopt;
    }
    case pb::Request::kSetFlags:
      if (!complete(q.set_flags().ref())) return "message reference is incomplete";
      return keyword_problem(q.set_flags().keywords());
    case pb::Request::kChangeFlags: {
      const auto& cf = q.change_flags();
      if (!complete(cf.ref())) return "message reference is incomplete";
      if (auto why = keyword_problem(cf.add_keywords())) return why;
      return keyword_problem(cf.remove_keywords());
    }
    case pb::Request::kRenumber:
      if (!complete(q.renumber().ref()) || q.renumber().uidvalidity() == 0 || q.renumber().uid() == 0)
        return "message reference, UIDVALIDITY or UID missing";
      return std::nullopt;
    case pb::Request::kExpunge:
      if (!complete(q.expunge().ref())) return "message reference is incomplete";
      return std::nullopt;
    case pb::Request::kStatus:
      return std::nullopt;
    case pb::Request::kNodeAdmin:
      if (q.node_admin().node() == 0) return "node id missing";
      if (!pb::NodeAdmin::State_IsValid(q.node_admin().state())) return "unknown node state";
      return std::nullopt;
    case pb::Request::kMove:
      if (!complete(q.move().ref()) || q.move().to_folder().empty())
        return "message reference or destination missing";
      return folder_problem(q.move().to_folder());
    case pb::Request::kFolders:
      if (q.folders().user().empty()) return "user is empty";
      return std::nullopt;
    case pb::Request::kFolderSubscribe:
      if (q.folder_subscribe().user().empty() || q.folder_subscribe().folder().empty())
        return "user and folder are required";
      return folder_problem(q.folder_subscribe().folder());
    case pb::Request::kFolderCreate:
      if (q.folder_create().user().empty() || q.folder_create().folder().empty())
        return "user and folder are required";
      return folder_problem(q.folder_create().folder());
    case pb::Request::kFolderDelete: {
      const auto& d = q.folder_delete();
      if (d.user().empty() || d.folder().empty() || d.folder() == "INBOX")
        return "user and a folder other than INBOX are required";
      return std::nullopt;
    }
    case pb::Request::kFolderRename: {
      const auto& rn = q.folder_rename();
      if (rn.user().empty() || rn.from().empty() || rn.to().empty() || rn.to() == "INBOX")
        return "user, from and a destination other than INBOX are required";
      return folder_problem(rn.to());
    }
    case pb::Request::OP_NOT_SET:
      break;
  }
  return "unknown or missing operation";
}

}  // namespace porcupine::agent
