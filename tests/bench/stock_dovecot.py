# SPDX-License-Identifier: MIT
"""The stock Dovecot the benchmarks and end-to-end tests compare with: one
configuration, written in the installed Dovecot's own dialect (2.3 on
Debian 12, 2.4 on Debian 13), so a comparison runs the same stock setup on
either. Used by imap_bench.py, smtp_bench.py and evaluate.py.

  conf(d, addr, instance, protocols, ports, mail, home, passdb)

d: the instance's directory (run/, state/, dovecot.log under it); ports:
{"imap": P, "pop3": P, "lmtp": P}, 0 or absent for none; mail: "maildir"
or "sdbox"; home: the per-user part of the mail and home paths, "user"
(the whole name) or "domain/name"; passdb: ("passwd-file", PATH),
("password", SECRET) (every user has that password) or ("none",) (no
password: LMTP only).
"""
import subprocess

DOVECOT = "/usr/sbin/dovecot"


def release(dovecot=DOVECOT):
    """"2.3" or "2.4": the installed Dovecot's major.minor."""
    out = subprocess.run([dovecot, "--version"], capture_output=True, text=True, timeout=10).stdout.split()
    return ".".join(out[0].split(".")[:2]) if out else ""


def _listener(service, name, port):
    return "  inet_listener %s {\n    port = %d\n  }\n" % (name, port)


def conf(d, addr, instance, protocols, ports, mail="maildir", home="user", passdb=("none",), version=None):
    v24 = (version or release()) == "2.4"
    if v24:
        per_user = "%{user}" if home == "user" else "%{user | domain}/%{user | username}"
    else:
        per_user = "%u" if home == "user" else "%d/%n"
    lines = ["# a stock Dovecot (tests/bench/stock_dovecot.py)"]
    if v24:
        lines += ["dovecot_config_version = 2.4.0", "dovecot_storage_version = 2.4.0"]
    lines += ["instance_name = %s" % instance, "base_dir = %s/run" % d, "state_dir = %s/state" % d,
              "log_path = %s/dovecot.log" % d, "listen = %s" % addr, "protocols = %s" % " ".join(protocols),
              "ssl = no", "first_valid_uid = 1", "lmtp_rcpt_check_quota = no"]
    lines.append("auth_allow_cleartext = yes" if v24 else "disable_plaintext_auth = no")
    lines.append("auth_mechanisms = plain login")
    if v24:
        lines += ["mail_driver = %s" % mail, "mail_path = %s/mail/%s" % (d, per_user)]
    else:
        lines.append("mail_location = %s:%s/mail/%s" % (mail, d, per_user))
    kind = passdb[0]
    if v24:
        if kind == "passwd-file":
            lines.append("passdb passwd-file {\n  passwd_file_path = %s\n}" % passdb[1])
        elif kind == "password":
            lines.append("passdb static {\n  password = %s\n}" % passdb[1])
        else:
            lines.append("passdb static {\n  fields {\n    nopassword = yes\n  }\n}")
        lines.append("userdb static {\n  fields {\n    uid = 65534\n    gid = 65534\n    home = %s/home/%s\n  }\n"
                     "  userdb_static_allow_all_users = yes\n}" % (d, per_user))
    else:
        args = {"passwd-file": lambda: passdb[1], "password": lambda: "password=%s" % passdb[1],
                "none": lambda: "nopassword=y"}[kind]()
        driver = "passwd-file" if kind == "passwd-file" else "static"
        lines.append("passdb {\n  driver = %s\n  args = %s\n}" % (driver, args))
        lines.append("userdb {\n  driver = static\n  args = uid=65534 gid=65534 home=%s/home/%s allow_all_users=yes\n}"
                     % (d, per_user))
    for service, names in (("imap", ("imap", "imaps")), ("pop3", ("pop3", "pop3s"))):
        lines.append("service %s-login {\n%s%s}" % (service, _listener(service, names[0], ports.get(service, 0)),
                                                     _listener(service, names[1], 0)))
    if ports.get("lmtp"):
        listener = _listener("lmtp", "lmtp", ports["lmtp"])
        if not v24:  # 2.4 listens on `listen` above; 2.3's LMTP listener wants its own address
            listener = listener.replace("    port =", "    address = %s\n    port =" % addr)
        lines.append("service lmtp {\n%s}" % listener)
    return "\n".join(lines) + "\n"
