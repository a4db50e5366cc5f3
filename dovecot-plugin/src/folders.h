/* folders.h - the agent's folder operations for the C plugin (folders.cc).
 * Return a porcupine_code (0 OK, 1 TEMPFAIL, 3 EXISTS, 7 NOT_FOUND, 100
 * unreachable, ...); on failure `err` holds one line. */
#ifndef PCP_FOLDERS_H
#define PCP_FOLDERS_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

enum pcp_folder_op_kind { PCP_FOLDER_CREATE, PCP_FOLDER_DELETE, PCP_FOLDER_RENAME };

/* The user's folders (INBOX first); freed with pcp_folders_free. */
int pcp_folders_get(const char* socket_path, int timeout_ms, const char* user, char*** names_r,
                    size_t* count_r, char* err, size_t errlen);
void pcp_folders_free(char** names, size_t count);
int pcp_folder_op(const char* socket_path, int timeout_ms, enum pcp_folder_op_kind op, const char* user,
                  const char* name, const char* new_name, char* err, size_t errlen);

#ifdef __cplusplus
}
#endif

#endif
