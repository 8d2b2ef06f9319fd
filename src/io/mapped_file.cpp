// MappedFile: read-only mmap of a whole file with RAII unmapping.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "core/log.h"
#include "io/safetensors.h"

namespace gptoss {

Result<std::shared_ptr<MappedFile>> MappedFile::open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const ErrorCode code = errno == ENOENT ? ErrorCode::kNotFound : ErrorCode::kIo;
    return make_error(code, "{}: cannot open: {}", path, std::strerror(errno));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return make_error(ErrorCode::kIo, "{}: cannot stat: {}", path, std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return make_error(ErrorCode::kIo, "{}: not a regular file", path);
  }
  std::shared_ptr<MappedFile> mf(new MappedFile());
  mf->path_ = path;
  mf->size_ = static_cast<size_t>(st.st_size);
  // mmap of length 0 is invalid; an empty file simply has no data (callers reject it by size).
  if (mf->size_ > 0) {
    void* p = ::mmap(nullptr, mf->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      return make_error(ErrorCode::kIo, "{}: mmap of {} bytes failed: {}", path, mf->size_, std::strerror(err));
    }
    mf->data_ = static_cast<const uint8_t*>(p);
    // Read-ahead is only a hint; a failure costs speed, never correctness.
    if (::madvise(p, mf->size_, MADV_WILLNEED) != 0) log_debug("{}: madvise(WILLNEED) failed", path);
  }
  ::close(fd);  // the mapping keeps the file referenced
  return mf;
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

}  // namespace gptoss
