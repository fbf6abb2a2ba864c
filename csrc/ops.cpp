// kdkit._C: op schemas (TORCH_LIBRARY) and a minimal Python module.
//
// Kernels register per device with TORCH_LIBRARY_IMPL(kdkit, CPU|CUDA, m) in csrc/cpu and
// csrc/cuda; the dispatcher picks by the device of the inputs. Python-side fake (meta) and
// autograd registrations live in kdkit/ops/_extension.py.
#include <Python.h>
#include <torch/library.h>

#include <string>

#include "cpu/cpu_ops.h"

TORCH_LIBRARY(kdkit, m) {
  // uint8 (Q, B), uint8 (N, B) -> int32 (Q, N) Hamming distances.
  m.def("hamming_distance(Tensor query_codes, Tensor db_codes) -> Tensor");
  // -> (int32 (Q, k) distances, int64 (Q, k) indices), rows ordered by (distance, index).
  m.def("hamming_topk(Tensor query_codes, Tensor db_codes, int k) -> (Tensor, Tensor)");
  // reduction: 0 = none, 1 = mean, 2 = sum. Returns (loss, grad_factor) where grad_factor is
  // d loss / d h for grad_output == 1, computed in the same pass as the loss.
  m.def("binarization_penalty(Tensor h, int reduction) -> (Tensor, Tensor)");
  m.def(
      "binarization_penalty_backward(Tensor grad_output, Tensor grad_factor, int reduction) -> "
      "Tensor");
  // uint8 (Q, B), uint8 (N, B) codes, int64 (Q, W), (N, W) label bitsets -> float64 (Q,)
  // average precision of each query's ranking by (distance, index); relevant = a shared
  // label. k in [1, N] (N = mAP@all); variant "truncated" keeps the relevant items ranked
  // in the top k, "dchmt" the first k relevant items. 0 where none is kept.
  m.def(
      "hamming_average_precision(Tensor query_codes, Tensor db_codes, Tensor query_labels, "
      "Tensor db_labels, int k, str variant) -> Tensor");
}

// ---- Python module: only small, non-dispatched status helpers. Plain CPython API (no
// pybind11 / torch/extension.h) to keep the build fast.
namespace {

PyObject* py_cpu_isa(PyObject*, PyObject*) {
  return PyUnicode_FromString(kdkit::cpu::active_isa_name());
}

PyObject* py_available_cpu_isas(PyObject*, PyObject*) {
  const auto isas = kdkit::cpu::available_isas();
  PyObject* list = PyList_New((Py_ssize_t)isas.size());
  if (list == nullptr) return nullptr;
  for (size_t i = 0; i < isas.size(); ++i) {
    PyObject* s = PyUnicode_FromString(isas[i].c_str());
    if (s == nullptr) {
      Py_DECREF(list);
      return nullptr;
    }
    PyList_SET_ITEM(list, (Py_ssize_t)i, s);
  }
  return list;
}

PyObject* py_set_cpu_isa(PyObject*, PyObject* arg) {
  const char* name = PyUnicode_AsUTF8(arg);
  if (name == nullptr) return nullptr;
  const std::string err = kdkit::cpu::set_isa(name);
  if (!err.empty()) {
    PyErr_SetString(PyExc_ValueError, err.c_str());
    return nullptr;
  }
  return PyUnicode_FromString(kdkit::cpu::active_isa_name());
}

PyObject* py_cuda_compiled(PyObject*, PyObject*) {
#ifdef KDKIT_WITH_CUDA
  Py_RETURN_TRUE;
#else
  Py_RETURN_FALSE;
#endif
}

PyObject* py_cpu_threaded(PyObject*, PyObject*) {
#ifdef _OPENMP
  Py_RETURN_TRUE;  // built with OpenMP: at::parallel_for spreads work over torch's threads
#else
  Py_RETURN_FALSE;
#endif
}

PyObject* py_clear_cpu_buffer_cache(PyObject*, PyObject*) {
  kdkit::cpu::clear_buffer_cache();
  Py_RETURN_NONE;
}

PyMethodDef kMethods[] = {
    {"cpu_isa", py_cpu_isa, METH_NOARGS, "Active CPU ISA path of the kdkit kernels."},
    {"available_cpu_isas", py_available_cpu_isas, METH_NOARGS,
     "ISA paths usable on this machine, best first."},
    {"set_cpu_isa", py_set_cpu_isa, METH_O,
     "Force the CPU ISA path ('scalar', 'avx2', 'avx512', 'auto'); returns the active name."},
    {"cuda_compiled", py_cuda_compiled, METH_NOARGS, "Whether CUDA kernels were compiled in."},
    {"cpu_threaded", py_cpu_threaded, METH_NOARGS,
     "Whether the CPU kernels were built with OpenMP (use torch.get_num_threads() threads)."},
    {"clear_cpu_buffer_cache", py_clear_cpu_buffer_cache, METH_NOARGS,
     "Release the CPU buffers cached for reuse by the penalty ops."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef kModule = {PyModuleDef_HEAD_INIT, "_C",
                       "kdkit compiled ops (registered under torch.ops.kdkit)", -1, kMethods};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&kModule); }
