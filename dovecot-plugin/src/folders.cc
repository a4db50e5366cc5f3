// folders.cc - the agent's folder operations (FoldersGet, FolderCreate,
// FolderDelete, FolderRename) for the C plugin, which the client's C ABI
// (porcupine_client.h) does not have yet. Built on the C++ client
// (client.h); no exception crosses into Dovecot. Runs in Dovecot's mail
// processes, one connection per call.
#include "folders.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "client/client.h"

namespace {

namespace pb = porcupine::agentpb;

int finish(porcupine::client::Client& c, const std::optional<pb::Response>& r, char* err, size_t errlen) {
  if (!r) {
    std::snprintf(err, errlen, "%s", c.error().c_str());
    return 100;  // PORCUPINE_UNREACHABLE
  }
  if (r->code() != pb::OK) std::snprintf(err, errlen, "%s: %s", porcupine::client::code_name(r->code()), r->detail().c_str());
  return static_cast<int>(r->code());
}

}  // namespace

extern "C" int pcp_folders_get(const char* socket_path, int timeout_ms, const char* user, char*** names_r,
                               size_t* count_r, char* err, size_t errlen) {
  try {
    porcupine::client::Client c(socket_path, timeout_ms);
    pb::Request req;
    req.mutable_folders()->set_user(user);
    auto r = c.call(req);
    int code = finish(c, r, err, errlen);
    if (code != 0) return code;
    size_t n = static_cast<size_t>(r->folders_size());
    char** names = static_cast<char**>(std::calloc(n + 1, sizeof(char*)));
    if (!names) return 8;
    for (size_t i = 0; i < n; ++i) names[i] = strdup(r->folders(static_cast<int>(i)).c_str());
    *names_r = names;
    *count_r = n;
    return 0;
  } catch (const std::exception& e) {
    std::snprintf(err, errlen, "%s", e.what());
    return 8;  // PORCUPINE_INTERNAL
  }
}

extern "C" void pcp_folders_free(char** names, size_t count) {
  for (size_t i = 0; i < count; ++i) std::free(names[i]);
  std::free(names);
}

extern "C" int pcp_folder_op(const char* socket_path, int timeout_ms, enum pcp_folder_op_kind op, const char* user,
                             const char* name, const char* new_name, char* err, size_t errlen) {
  try {
    porcupine::client::Client c(socket_path, timeout_ms);
    pb::Request req;
    switch (op) {
      case PCP_FOLDER_CREATE:
        req.mutable_folder_create()->set_user(user);
        req.mutable_folder_create()->set_folder(name);
        break;
      case PCP_FOLDER_DELETE:
        req.mutable_folder_delete()->set_user(user);
        req.mutable_folder_delete()->set_folder(name);
        break;
      case PCP_FOLDER_RENAME:
        req.mutable_folder_rename()->set_user(user);
        req.mutable_folder_rename()->set_from(name);
        req.mutable_folder_rename()->set_to(new_name ? new_name : "");
        break;
    }
    auto r = c.call(req);
    return finish(c, r, err, errlen);
  } catch (const std::exception& e) {
    std::snprintf(err, errlen, "%s", e.what());
    return 8;
  }
}
