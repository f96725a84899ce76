#pragma once
// Buffers a harness hands to the kernels, and their files.
#include <cstring>
#include <fstream>
#include <memory>
#include <new>
#include <string>

#include "emulator.h"

namespace harness {

// A heap buffer of exactly the bytes asked for, its start 256-byte aligned as
// cudaMalloc's are, so that AddressSanitizer (the harness built with
// -fsanitize=address) reports any access past its end.
struct Buffer {
  std::unique_ptr<unsigned char, void (*)(unsigned char*)> mem;
  unsigned char* p = nullptr;
  size_t bytes = 0;
  explicit Buffer(size_t n)
      : mem(static_cast<unsigned char*>(::operator new(n ? n : 1, std::align_val_t(256))),
            [](unsigned char* q) { ::operator delete(q, std::align_val_t(256)); }),
        bytes(n) {
    p = mem.get();
  }
  template <typename T>
  T* as() { return reinterpret_cast<T*>(p); }
};

// A buffer the kernel reads or writes, named in the memory-access profile.
inline void watch(const Buffer& b, const char* name) {
#ifdef NST_EMU_PROFILE
  emu::profile::add_global(b.p, b.bytes, name);
#else
  (void)b, (void)name;
#endif
}

inline Buffer read_file(const std::string& path, size_t bytes) {
  Buffer b(bytes);
  std::ifstream in(path, std::ios::binary);
  in.read(reinterpret_cast<char*>(b.p), (std::streamsize)bytes);
  if (!in || (size_t)in.gcount() != bytes) emu::fail(("short read: " + path).c_str());
  return b;
}

inline void write_file(const std::string& path, const void* p, size_t bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(static_cast<const char*>(p), (std::streamsize)bytes);
  if (!out) emu::fail(("cannot write " + path).c_str());
}

}  // namespace harness
