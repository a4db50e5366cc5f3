// SPDX-License-Identifier: MIT
// doc_main.cc - porcupine-config-doc: prints the parameter table of
// porcupine.conf, as Markdown (the generated part of
// docs/configuration.md) or as the whole manual page porcupine.conf(5).
//
// Usage: porcupine-config-doc > table.md
//        porcupine-config-doc --man > porcupine.conf.5
//
// The build makes the installed porcupine.conf.5 with --man, so the page
// always lists the parameters of the programs it is installed with.
#include <algorithm>
#include <cstdint>
#include <iostream>
#include <string>
#include <string_view>
#include <vector>

#include "config/config.h"

#ifndef PORCUPINE_VERSION
#define PORCUPINE_VERSION "unknown"
#endif

namespace {

using porcupine::config::Param;

// Text as roff input, one line or more: a backslash is \e, every hyphen
// \- (names, paths and values are copied from pages, and a plain - may be
// rendered as a typographic hyphen), a line never begins with a control
// character (. or '), and anything beyond ASCII is \[uXXXX] (groff reads
// its input as Latin-1 otherwise).
std::string roff(std::string_view text) {
  static const char kHex[] = "0123456789ABCDEF";
  std::string out;
  bool line_start = true;
  for (std::size_t i = 0; i < text.size(); ++i) {
    unsigned char c = static_cast<unsigned char>(text[i]);
    if (line_start && (c == '.' || c == '\'')) out += "\\&";
    line_start = c == '\n';
    if (c == '\\') {
      out += "\\e";
    } else if (c == '-') {
      out += "\\-";
    } else if (c < 0x80) {
      out += static_cast<char>(c);
    } else {
      // UTF-8; a byte that does not start a well-formed sequence is U+FFFD.
      int more = (c & 0xe0) == 0xc0 ? 1 : (c & 0xf0) == 0xe0 ? 2 : (c & 0xf8) == 0xf0 ? 3 : 0;
      std::uint32_t cp = c & (0x3fu >> more);
      bool ok = more > 0 && i + more < text.size();
      for (int k = 1; ok && k <= more; ++k) {
        unsigned char d = static_cast<unsigned char>(text[i + k]);
        ok = (d & 0xc0) == 0x80;
        cp = (cp << 6) | (d & 0x3fu);
      }
      if (ok) i += more;
      else cp = 0xfffd;
      std::string hex;
      // At least four digits, no leading zero beyond them.
      for (int shift = cp > 0xfffff ? 20 : cp > 0xffff ? 16 : 12; shift >= 0; shift -= 4)
        hex += kHex[(cp >> shift) & 0xf];
      out += "\\[u" + hex + "]";
    }
  }
  return out;
}

// One parameter: its name as the tag, its description, then type, bounds
// and default as in the table of docs/configuration.md.
std::string man_entry(const Param& p) {
  std::string out = ".TP\n.B " + roff(p.name) + "\n" + roff(p.doc) + "\n.br\nType: " +
                    roff(porcupine::config::type_name(p.type));
  std::string bounds = porcupine::config::bounds_text(p);
  if (!bounds.empty()) out += "; bounds: " + roff(bounds);
  out += "\n.br\n";
  if (p.mandatory) out += "Default: none (mandatory)";
  else if (p.fallback.empty()) out += "Default: empty";
  else out += "Default: \\fB" + roff(p.fallback) + "\\fR";
  return out + "\n";
}

// The page around the table: what the file is and how it is written, as
// cluster-agent/config/config.cc reads it (docs/configuration.md says the
// same in Markdown).
constexpr std::string_view kHead = R"(.SH NAME
porcupine.conf \- configuration of a Porcupine mail cluster node
.SH SYNOPSIS
.B /etc/porcupine/porcupine.conf
.SH DESCRIPTION
.B porcupine.conf
holds the parameters of one node of a Porcupine cluster.
.BR porcupine\-agent (8)
reads it once, when it starts;
.BR porcupine\-milter (8)
reads the same file for its own parameters (those named
.BR milter_ *,
and
.BR node_id ,
.BR local_socket ,
.BR cluster_domains ,
.BR log_to ,
.BR syslog_facility ).
Neither program reads it again while running: restart it to apply a change.
The maintainer scripts of the Debian packages read
.B secret_file
and
.B local_socket_group
from it.
.PP
A parameter the file does not set has its default.
Only
.B node_id
has none and must be set.
.SS Syntax
The file is written like Postfix's
.IR main.cf :
.IP \(bu 2
One
.I name
=
.I value
per line.
Whitespace around the = and at both ends of the value is dropped.
.IP \(bu 2
A line whose first non\-blank character is # is a comment, and blank lines
are ignored.
A # after a value is part of the value.
.IP \(bu 2
A line that starts with whitespace continues the value of the line before
it, joined with one space.
.IP \(bu 2
\fB$\fP\fIname\fP, \fB${\fP\fIname\fP\fB}\fP or \fB$(\fP\fIname\fP\fB)\fP
stands for the value of another parameter, whether the file sets it or it
has its default;
.B $$
is a plain $.
A parameter that refers back to itself, directly or through others, is an
error.
.IP \(bu 2
A parameter set twice is not an error: the last one wins, with a warning
that names both lines.
.SS Values
.TP
.B string
Any text.
.TP
.B path
An absolute path.
.TP
.B choice
One of the words listed as the parameter's bounds.
.TP
.B count
A whole number within the parameter's bounds.
.TP
.B time (ms)
Milliseconds, or a number with a unit:
.BR ms ,
.BR s ,
.BR m ,
.B h
or
.B d
(e.g.\&
.BR "probe_timeout_ms = 2s" ).
.TP
.B time (s)
Seconds, or a number with a unit:
.BR s ,
.BR m ,
.B h
or
.BR d .
.TP
.B size
Bytes, or a number with a unit:
.BR k ,
.BR M ,
.B G
or
.B T
in powers of 1024, in any case and optionally followed by
.B B
(e.g.\&
.BR "cache_size = 2G" ).
.TP
.B yes/no
.B yes
or
.BR no .
.TP
.B host:port
An address and a port; an IPv6 address is written in brackets:
.BR [::1]:7400 .
.TP
.B node list
Nodes written as
.IR id @ host : port ,
separated by commas, whitespace or both, e.g.\&
.BR "1@10.0.0.1:7400, 2@10.0.0.2:7400, 3@[fd00::3]:7400" .
The id is 1..65535; no id and no address may appear twice.
.TP
.B list
Words separated by commas, whitespace or both.
.SS Rules across parameters
.IP \(bu 2
.B peers
may be the same on every node: a node may find itself in it, but only with
its own
.B listen_address
(or, when that is 0.0.0.0 or [::], its port).
.IP \(bu 2
.B buckets
must be the same on every node of a cluster.
.IP \(bu 2
.B probe_timeout_ms
must be greater than
.BR probe_interval_ms .
.IP \(bu 2
.B cache_dir
is empty (the directory
.I cache
in
.BR spool_directory )
or an absolute path that is neither
.B spool_directory
(nor above it) nor inside its
.I msg
or
.IR incoming .
.SS Errors
A program that reads the file reports every problem at once, one line each
on standard error, as
.IR file : line ": error: " message ,
and exits with status 78 without starting, e.g.:
.PP
.RS 4
.EX
/etc/porcupine/porcupine.conf:7: error: unknown parameter \(aqprobe_intervall_ms\(aq (did you mean \(aqprobe_interval_ms\(aq?)
/etc/porcupine/porcupine.conf:9: error: buckets = 8 is out of range; allowed: 16..65536
.EE
.RE
.SH PARAMETERS
Generated from the parameter table of the programs.
.B porcupine\-config\-doc
prints the same table in Markdown, and with
.B \-\-man
this page;
.B porcupine\-agent \-\-print\-config
prints the value each parameter has in a given file.
)";

constexpr std::string_view kTail = R"(.SH FILES
.TP
.I /etc/porcupine/porcupine.conf
The node's configuration (a conffile of the
.B porcupine\-agent
package).
.TP
.I /usr/share/porcupine\-agent/porcupine.conf
The example configuration as packaged.
.TP
.I /etc/porcupine/secret
The default
.BR secret_file :
the secret shared by every node of the cluster (mode 0600, owner
porcupine).
.SH EXAMPLES
A node of a three\-node cluster:
.PP
.RS 4
.EX
# This node.
node_id = 2
listen_address = 10.0.0.2:7400
# Every node of the cluster, this one included.
peers = 1@10.0.0.1:7400, 2@10.0.0.2:7400,
    3@10.0.0.3:7400
cluster_domains = example.org, example.com
.EE
.RE
.PP
Every parameter with its default, as a file to start from:
.PP
.RS 4
.EX
porcupine\-agent \-\-print\-defaults
.EE
.RE
.SH SEE ALSO
.BR porcupine\-agent (8),
.BR porcupine\-milter (8),
.BR porcupinectl (8),
.BR postconf (5)
.PP
.I /usr/share/doc/porcupine\-agent/configuration.md
)";

std::string man_page() {
  std::string out =
      ".\\\" porcupine.conf.5 - made by porcupine-config-doc --man from the parameter\n"
      ".\\\" table of cluster-agent/config/config.cc; do not edit.\n"
      ".TH PORCUPINE.CONF 5 \"\" \"porcupine " +
      roff(PORCUPINE_VERSION) + "\" \"File Formats Manual\"\n";
  // Names, paths and values are not hyphenated (.EE restores HY).
  out += ".nr HY 0\n.nh\n";
  out += kHead;
  std::vector<const Param*> sorted;
  for (const Param& p : porcupine::config::parameters()) sorted.push_back(&p);
  std::sort(sorted.begin(), sorted.end(), [](auto* a, auto* b) { return a->name < b->name; });
  for (const Param* p : sorted) out += man_entry(*p);
  out += kTail;
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string_view arg = argc > 1 ? argv[1] : "";
  if (argc > 2 || (argc == 2 && arg != "--man" && arg != "--help" && arg != "-h")) {
    std::cerr << "usage: porcupine-config-doc [--man]\n";
    return 64;  // EX_USAGE
  }
  if (arg == "--help" || arg == "-h") {
    std::cout << "usage: porcupine-config-doc [--man]\n"
                 "Prints the porcupine.conf parameter table as Markdown, or with --man\n"
                 "the manual page porcupine.conf(5) in roff.\n";
    return 0;
  }
  std::cout << (arg == "--man" ? man_page() : porcupine::config::print_docs_markdown());
  return std::cout.good() ? 0 : 1;
}
