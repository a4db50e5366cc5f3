// doc_main.cc - porcupine-config-doc: prints the parameter table of
// porcupine.conf as Markdown, the generated part of docs/configuration.md.
//
// Usage: porcupine-config-doc > table.md
#include <iostream>

#include "config/config.h"

int main() {
  std::cout << porcupine::config::print_docs_markdown();
  return std::cout.good() ? 0 : 1;
}
