#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""The man pages the packages install (docs/man/, and porcupine.conf.5
made from the parameter table), as the build leaves them in BUILD/man.

Usage: man_test.py --build BUILD_DIR [unittest args]

Each page renders with groff without a single warning, is ASCII, has a
NAME line that mandb can index, and is installed gzip -9n'd. The pages
cannot drift from the programs: porcupinectl(8) describes every command
and option `porcupinectl --help` lists and no other, porcupine-agent(8)
every option of `porcupine-agent --help`, porcupine-milter(8) every option
of its usage line, and porcupine.conf(5) is exactly what
`porcupine-config-doc --man` prints and names every parameter of
`porcupine-agent --print-defaults`, and porcupine-config-doc(1) every
option of its usage line.
"""
import gzip
import os
import re
import shutil
import subprocess
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BUILD = os.path.join(ROOT, "build")

# page -> the program it documents (relative to the build tree), or None.
PAGES = {
    "porcupine.conf.5": None,
    "porcupine-agent.8": "cluster-agent/agent/porcupine-agent",
    "porcupinectl.8": "cluster-agent/agent/porcupinectl",
    "porcupine-milter.8": "milter/porcupine-milter",
    "porcupine-config-doc.1": "cluster-agent/config/porcupine-config-doc",
}


def page_path(page):
    return os.path.join(BUILD, "man", page)


def program(page):
    return os.path.join(BUILD, PAGES[page])


def render(page):
    """The page as plain text: no escape sequences or overstriking, and
    groff's Unicode minus, hyphen and quotes as ASCII."""
    r = subprocess.run(["groff", "-man", "-Tutf8", "-P-c", "-P-b", "-P-u", "-P-o", page_path(page)],
                       capture_output=True, check=True)
    text = r.stdout.decode("utf-8")
    for uni, ascii_ in (("\u2212", "-"), ("\u2010", "-"), ("\u2018", "'"), ("\u2019", "'"),
                        ("\u201c", '"'), ("\u201d", '"')):
        text = text.replace(uni, ascii_)
    return text


def sections(text):
    """{heading: body} of a rendered page (headings start in column 0)."""
    out, name = {}, None
    for line in text.splitlines():
        if line and not line[0].isspace():
            name = line.strip()
            out.setdefault(name, "")
        elif name is not None:
            out[name] += line + "\n"
    return out


def tags(body):
    """The first words of the tag lines of .TP entries at the top level of
    a section (indented by 7 columns)."""
    return [line[7:] for line in body.splitlines() if re.match(r"^ {7}\S", line)]


def help_options(text):
    """Every -x and --xyz in the option column of Boost's --help listing."""
    options = set()
    for line in text.splitlines():
        if re.match(r"^  -", line):
            column = re.split(r"\s{2,}", line.strip())[0]
            options |= set(re.findall(r"(?<![\w-])--?[a-z][a-z-]*", column))
    return options


def page_options(body):
    """Every option that begins a tag line of an OPTIONS section (a short
    tag shares its line with the description, which starts with a capital)."""
    options = set()
    for tag in tags(body):
        if tag.startswith("-"):
            tag = re.split(r"\s+(?=[A-Z])", tag)[0]
            options |= set(re.findall(r"(?<![\w-])--?[a-z][a-z-]*", tag))
    return options


def page_tags(page, section):
    """The bold start of each .TP tag of a section, from the roff source
    (.B status, .BI "user add " address)."""
    with open(page_path(page)) as f:
        body = f.read().split("\n.SH %s\n" % section, 1)[1].split("\n.SH ", 1)[0]
    lines = body.splitlines()
    found = []
    for i, line in enumerate(lines[:-1]):
        if line != ".TP":
            continue
        tag = lines[i + 1]
        if tag.startswith(".B "):
            found.append(tag[3:].replace('"', "").strip())
        else:
            m = re.match(r'^\.BI "([^"]+)"', tag)
            if m:
                found.append(m.group(1).strip())
    return found


class ManPages(unittest.TestCase):
    def test_EveryPage_RendersWithoutWarnings_AsciiAndIndexable(self):
        for page in PAGES:
            with self.subTest(page=page):
                path = page_path(page)
                self.assertTrue(os.path.isfile(path), "%s is not built (target porcupine-man)" % path)
                with open(path, "rb") as f:
                    data = f.read()
                self.assertTrue(all(b < 0x80 for b in data), "%s is not ASCII" % page)
                self.assertNotIn(b"@PROJECT_VERSION@", data)
                name, section = page.rsplit(".", 1)
                self.assertRegex(data.decode(), r'(?m)^\.TH %s %s ' % (re.escape(name.upper().replace("-", "\\-")),
                                                                      section))
                r = subprocess.run(["groff", "-man", "-ww", "-z", "-Tutf8", path], capture_output=True, text=True)
                self.assertEqual((r.returncode, r.stderr), (0, ""), page)
                # What man(1) itself runs on the installed, compressed page.
                r = subprocess.run(["man", "--warnings", "-l", path + ".gz"], capture_output=True, text=True,
                                   env=dict(os.environ, MANPAGER="cat", PAGER="cat", MANWIDTH="80"))
                self.assertEqual((r.returncode, r.stderr), (0, ""), page)
                # mandb reads the NAME line for whatis(1) and apropos(1).
                r = subprocess.run(["lexgrog", path], capture_output=True, text=True)
                self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
                self.assertIn('"%s - ' % name, r.stdout)

    def test_InstalledPages_AreTheSourcesGzip9n(self):
        for page in PAGES:
            with self.subTest(page=page):
                with open(page_path(page) + ".gz", "rb") as f:
                    data = f.read()
                self.assertEqual(data[:3], b"\x1f\x8b\x08")
                self.assertEqual(data[3] & 0x08, 0, "the file name is stored (gzip -n)")
                self.assertEqual(data[4:8], b"\0\0\0\0", "a time stamp is stored (gzip -n)")
                self.assertEqual(data[8], 2, "not compressed with -9")
                with open(page_path(page), "rb") as f:
                    self.assertEqual(gzip.decompress(data), f.read())

    def test_ConfPage_IsTheParameterTable(self):
        doc = os.path.join(BUILD, "cluster-agent/config/porcupine-config-doc")
        with open(page_path("porcupine.conf.5")) as f:
            self.assertEqual(subprocess.run([doc, "--man"], capture_output=True, text=True, check=True).stdout,
                             f.read(), "porcupine.conf.5 is stale: build the target porcupine-man")
        defaults = subprocess.run([program("porcupine-agent.8"), "--print-defaults"], capture_output=True,
                                  text=True, check=True).stdout
        names = [line.split(" =")[0] for line in defaults.splitlines()]
        self.assertIn("node_id", names)
        self.assertEqual(page_tags("porcupine.conf.5", "PARAMETERS"), sorted(names))
        rendered = sections(render("porcupine.conf.5"))["PARAMETERS"]
        for name in names:
            self.assertRegex(rendered, r"(?m)^ {7}%s( |$)" % name)

    def test_AgentPage_EveryOptionOfItsHelp(self):
        out = subprocess.run([program("porcupine-agent.8"), "--help"], capture_output=True, text=True,
                             check=True).stdout
        options = help_options(out)
        self.assertTrue({"--config", "-c", "--print-defaults", "--allow-root"} <= options, options)
        self.assertEqual(page_options(sections(render("porcupine-agent.8"))["OPTIONS"]), options)

    def test_CtlPage_EveryCommandAndOptionOfItsHelp(self):
        out = subprocess.run([program("porcupinectl.8"), "--help"], capture_output=True, text=True,
                             check=True).stdout
        commands = []
        listing = out.split("commands:\n", 1)[1]
        for line in listing.splitlines():
            if not line.startswith("  "):
                break
            usage = re.split(r"\s{2,}", line.strip())[0]
            words = []
            for w in usage.split():
                if not re.fullmatch(r"[a-z]+", w):
                    break
                words.append(w)
            commands.append(" ".join(words))
        self.assertIn("status", commands)
        self.assertIn("folder rename", commands)
        self.assertEqual(sorted(page_tags("porcupinectl.8", "COMMANDS")), sorted(commands))
        self.assertEqual(page_options(sections(render("porcupinectl.8"))["OPTIONS"]), help_options(out))

    def test_MilterPage_EveryOptionOfItsUsage(self):
        path = program("porcupine-milter.8")
        if not os.path.exists(path):
            self.skipTest("porcupine-milter is not built here (no libmilter)")
        r = subprocess.run([path, "-h"], capture_output=True, text=True)
        self.assertEqual(r.returncode, 64)
        options = set(re.findall(r"\[(-[a-z])\b", r.stderr))
        self.assertEqual(options, {"-c", "-o"}, r.stderr)
        self.assertEqual(page_options(sections(render("porcupine-milter.8"))["OPTIONS"]), options)

    def test_ConfigDocPage_EveryOptionOfItsUsage(self):
        r = subprocess.run([program("porcupine-config-doc.1"), "--help"], capture_output=True, text=True,
                           check=True)
        options = set(re.findall(r"\[(--?[a-z][a-z-]*)\]", r.stdout)) | {"-h", "--help"}
        self.assertIn("--man", options, r.stdout)
        r = subprocess.run([program("porcupine-config-doc.1"), "--bogus"], capture_output=True, text=True)
        self.assertEqual(r.returncode, 64)
        self.assertEqual(page_options(sections(render("porcupine-config-doc.1"))["OPTIONS"]), options)


if __name__ == "__main__":
    args = sys.argv[1:]
    if "--build" in args:
        i = args.index("--build")
        BUILD = os.path.abspath(args[i + 1])
        del args[i:i + 2]
    for tool in ("groff", "man", "lexgrog"):
        if not shutil.which(tool):
            sys.exit("man_test: %s not found (groff-base, man-db)" % tool)
    unittest.main(argv=[sys.argv[0]] + args, verbosity=2)
