// Batched eigendecomposition of small symmetric matrices on CPU, as an XLA FFI custom call.
//
// Why: LAPACK's syevd costs 55-75 us per 32 x 32 matrix on the hosts we measured, most of it
// per-call overhead and short loops, jaxlib's batched kernel is no faster, and it can
// deadlock XLA's thread pool (spectral.py). Here the batch is vectorised instead: L matrices
// are interleaved so that every step of the algorithm is one SIMD operation over L of them
// (batched_eigh_kernel.inc), the textbook algorithm of LAPACK's ssteqr route:
// Householder tridiagonalisation, then implicit QL with Wilkinson shifts and the rotations
// accumulated into the eigenvectors. Each lane is scaled so that its largest entry is 1.
//
// The blocks of a batch are split over threads that this call starts and joins; XLA's pool
// is neither used nor waited on, so the call cannot starve it.
//
// Outputs match jnp.linalg.eigh: ascending eigenvalues w (..., n) and eigenvectors as the
// columns of q (..., n, n) of the symmetric part (g + g^T) / 2; NaN for a matrix with a
// non-finite entry or whose iteration did not converge.

#include <Python.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#if defined(__linux__)
#include <sched.h>
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// QL sweeps per eigenvalue before a matrix is declared unconverged (LAPACK allows 30).
constexpr int kMaxIterations = 30;
// Matrices per SIMD block, one 256-bit vector per element: wider blocks idle more lanes
// in the QL sweeps (each block iterates until its slowest lane converges).
constexpr int kLanesF32 = 8;
constexpr int kLanesF64 = 4;
// Blocks per thread below which no other thread is started: a block of 32 x 32 matrices
// takes about 0.13 ms on one core, starting a thread tens of microseconds (not tuned).
constexpr int64_t kMinBlocksPerThread = 4;

namespace baseline {
#include "batched_eigh_kernel.inc"
}  // namespace baseline

// The same code compiled for AVX2 + FMA (x86-64-v3), chosen at run time where the CPU has
// them: 3x the baseline's speed on the Intel host (16 against 53 us per 32 x 32 matrix).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MENET_HAS_AVX2_BUILD 1
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v3")
namespace avx2 {
#include "batched_eigh_kernel.inc"
}  // namespace avx2
#pragma GCC pop_options
#endif

template <typename T>
using RangeFn = void (*)(int64_t, int64_t, int, const T*, T*, T*);

// "avx2" where the CPU has AVX2 and FMA, else "baseline"; MENET_JAX_EIGH_ISA=baseline in the
// environment forces the baseline (its tests run both).
const char* Isa() {
#if defined(MENET_HAS_AVX2_BUILD)
  const char* forced = std::getenv("MENET_JAX_EIGH_ISA");
  if ((forced == nullptr || std::strcmp(forced, "baseline") != 0) && __builtin_cpu_supports("avx2") &&
      __builtin_cpu_supports("fma")) {
    return "avx2";
  }
#endif
  return "baseline";
}

template <typename T, int L>
RangeFn<T> SelectRange() {
#if defined(MENET_HAS_AVX2_BUILD)
  if (std::strcmp(Isa(), "avx2") == 0) return avx2::EighRange<T, L>;
#endif
  return baseline::EighRange<T, L>;
}

int HostThreads() {
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
#endif
  return int(std::max(1u, std::thread::hardware_concurrency()));
}

// Returns false if a thread could not allocate its scratch space. A thread that cannot be
// started leaves its share to this one.
template <typename T, int L>
bool EighBatch(int64_t batch, int n, const T* g, T* w, T* q) {
  static const RangeFn<T> range = SelectRange<T, L>();
  const int64_t blocks = (batch + L - 1) / L;
  const int64_t threads =
      std::min<int64_t>(HostThreads(), std::max<int64_t>(1, blocks / kMinBlocksPerThread));
  const int64_t per_thread = (blocks + threads - 1) / threads * L;
  std::atomic<bool> ok{true};
  auto run = [&](int64_t begin, int64_t end) {
    try {
      range(begin, end, n, g, w, q);
    } catch (const std::bad_alloc&) {
      ok = false;
    }
  };
  std::vector<std::thread> helpers;
  std::vector<std::pair<int64_t, int64_t>> inline_ranges = {{0, std::min(batch, per_thread)}};
  for (int64_t t = 1; t < threads; ++t) {
    const int64_t begin = t * per_thread, end = std::min(batch, begin + per_thread);
    if (begin >= end) continue;
    try {
      helpers.emplace_back(run, begin, end);
    } catch (const std::system_error&) {
      inline_ranges.emplace_back(begin, end);
    }
  }
  for (const auto& [begin, end] : inline_ranges) run(begin, end);
  for (auto& helper : helpers) helper.join();
  return ok;
}

template <ffi::DataType D>
ffi::Error Eigh(ffi::Buffer<D> g, ffi::ResultBuffer<D> w, ffi::ResultBuffer<D> q) {
  const auto dims = g.dimensions();
  if (dims.size() < 2 || dims[dims.size() - 1] != dims[dims.size() - 2]) {
    return ffi::Error::InvalidArgument("batched_eigh: g must be (..., n, n)");
  }
  const int64_t n = dims.back();
  if (n == 0) return ffi::Error::Success();
  const int64_t batch = int64_t(g.element_count()) / (n * n);
  bool ok;
  if constexpr (D == ffi::DataType::F32) {
    ok = EighBatch<float, kLanesF32>(batch, int(n), g.typed_data(), w->typed_data(), q->typed_data());
  } else {
    ok = EighBatch<double, kLanesF64>(batch, int(n), g.typed_data(), w->typed_data(), q->typed_data());
  }
  if (!ok) return ffi::Error(ffi::ErrorCode::kResourceExhausted, "batched_eigh: out of memory");
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER(kEighF32, Eigh<ffi::DataType::F32>,
                       ffi::Ffi::Bind()
                           .Arg<ffi::Buffer<ffi::DataType::F32>>()
                           .Ret<ffi::Buffer<ffi::DataType::F32>>()
                           .Ret<ffi::Buffer<ffi::DataType::F32>>());
XLA_FFI_DEFINE_HANDLER(kEighF64, Eigh<ffi::DataType::F64>,
                       ffi::Ffi::Bind()
                           .Arg<ffi::Buffer<ffi::DataType::F64>>()
                           .Ret<ffi::Buffer<ffi::DataType::F64>>()
                           .Ret<ffi::Buffer<ffi::DataType::F64>>());

// Python: handlers() -> {"float32": capsule, "float64": capsule}, for jax.ffi.register_ffi_target.
static PyObject* Handlers(PyObject*, PyObject*) {
  PyObject* out = PyDict_New();
  if (out == nullptr) return nullptr;
  const std::pair<const char*, void*> entries[] = {{"float32", reinterpret_cast<void*>(kEighF32)},
                                                   {"float64", reinterpret_cast<void*>(kEighF64)}};
  for (const auto& [dtype, fn] : entries) {
    PyObject* capsule = PyCapsule_New(fn, nullptr, nullptr);
    if (capsule == nullptr || PyDict_SetItemString(out, dtype, capsule) != 0) {
      Py_XDECREF(capsule);
      Py_DECREF(out);
      return nullptr;
    }
    Py_DECREF(capsule);
  }
  return out;
}

static PyObject* IsaName(PyObject*, PyObject*) { return PyUnicode_FromString(Isa()); }

static PyMethodDef kMethods[] = {
    {"handlers", Handlers, METH_NOARGS, "XLA FFI handlers of the batched eigensolver, by dtype."},
    {"isa", IsaName, METH_NOARGS, "The compiled version in use: 'avx2' or 'baseline'."},
    {nullptr, nullptr, 0, nullptr}};

static PyModuleDef kModule = {PyModuleDef_HEAD_INIT, "_batched_eigh",
                              "Batched small-matrix eigensolver (XLA FFI, CPU).", -1, kMethods};

PyMODINIT_FUNC PyInit__batched_eigh() { return PyModule_Create(&kModule); }
