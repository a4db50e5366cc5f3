#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
"""digest_bench.py - what IDLE's poll costs: a folder's digest
(porcupine_folder_digest) against its whole listing (porcupine_folder_list),
through the client library, on a local 3-node cluster (real agents and
redis-servers, scripts/porcupine-local) on 127.0.K.1-3.

Usage: digest_bench.py --build BUILD [--subnet K] [--messages N] [--calls C]
Prints milliseconds per call of each and their ratio; asserts no speed.
"""
import argparse
import ctypes
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(ROOT, "build"))
    ap.add_argument("--subnet", type=int, default=92)
    ap.add_argument("--messages", type=int, default=500)
    ap.add_argument("--calls", type=int, default=50)
    a = ap.parse_args()
    build = os.path.abspath(a.build)
    base = tempfile.mkdtemp(prefix="pcp-digest-")
    local = [sys.executable, os.path.join(ROOT, "scripts", "porcupine-local"), "--dir", base, "--build", build]
    ctl = os.path.join(build, "cluster-agent", "agent", "porcupinectl")
    sock = os.path.join(base, "n1", "agent.sock").encode()
    user = b"digest@example.org"
    try:
        subprocess.run(local + ["start", "3", "--with", "none", "--subnet", str(a.subnet)], check=True,
                       stdout=subprocess.DEVNULL)
        subprocess.run(local + ["wait-converged"], check=True, stdout=subprocess.DEVNULL)
        subprocess.run([ctl, "--socket", sock, "user", "add", user, "--password", "pw"], check=True,
                       stdout=subprocess.DEVNULL)
        for i in range(a.messages):
            subprocess.run([ctl, "--socket", sock, "mail", "deliver", user], check=True, stdout=subprocess.DEVNULL,
                           input=b"Subject: m%d\r\n\r\nbody\r\n" % i)
        lib = ctypes.CDLL(os.path.join(build, "cluster-agent", "agent", "libporcupine-client.so"))
        lib.porcupine_open.restype = ctypes.c_void_p
        lib.porcupine_open.argtypes = [ctypes.c_char_p, ctypes.c_int]
        lib.porcupine_folder_list.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p]
        lib.porcupine_folder_free.argtypes = [ctypes.c_void_p]
        lib.porcupine_folder_digest.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p]
        lib.porcupine_close.argtypes = [ctypes.c_void_p]
        c = lib.porcupine_open(sock, 10000)
        folder = ctypes.create_string_buffer(256)  # struct porcupine_folder
        digest = ctypes.c_uint64()
        started = time.time()
        for _ in range(a.calls):
            if lib.porcupine_folder_list(c, user, b"INBOX", folder) != 0:
                sys.exit("digest_bench: listing failed")
            lib.porcupine_folder_free(folder)
        list_ms = (time.time() - started) * 1000 / a.calls
        started = time.time()
        for _ in range(a.calls):
            if lib.porcupine_folder_digest(c, user, b"INBOX", ctypes.byref(digest)) != 0:
                sys.exit("digest_bench: digest failed")
        digest_ms = (time.time() - started) * 1000 / a.calls
        lib.porcupine_close(c)
        print("digest_bench: %d messages, 3 nodes, %d calls each" % (a.messages, a.calls))
        print("  listing %.2f ms/call, digest %.2f ms/call, ratio %.1fx" % (list_ms, digest_ms, list_ms / digest_ms))
    finally:
        subprocess.run(local + ["stop"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
