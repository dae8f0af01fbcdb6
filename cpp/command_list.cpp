// command_list.cpp: MFA's indirect command buffer. Encodes recorded between begin and end are
// captured from a private stream into a CUDA graph, instantiated once, and replayed with one launch.
#include <memory>

#include "context.hpp"
#include "errors.hpp"

struct mfa_command_list {
  std::shared_ptr<mfa::Context> context;
  mfa::CUstream recording_stream = nullptr;
  mfa::CUgraph graph = nullptr;
  mfa::CUgraphExec executable = nullptr;
  bool recording = false;
  int64_t launches = 0;

  void release_graph() {
    const mfa::DriverApi &api = mfa::driver();
    if (executable) api.cuGraphExecDestroy(executable);
    if (graph) api.cuGraphDestroy(graph);
    executable = nullptr;
    graph = nullptr;
    launches = 0;
  }

  ~mfa_command_list() {
    // Destructors must not throw: a failure to bind the context leaves the handles to the process's end.
    if (mfa::driver().cuCtxSetCurrent(context->primary()) != mfa::CUDA_SUCCESS) return;
    if (recording) {
      mfa::CUgraph abandoned = nullptr;
      mfa::driver().cuStreamEndCapture(recording_stream, &abandoned);
      if (abandoned) mfa::driver().cuGraphDestroy(abandoned);
    }
    release_graph();
    if (recording_stream) mfa::driver().cuStreamDestroy(recording_stream);
  }
};

extern "C" {

MFA_API mfa_status mfa_command_list_create(mfa_context *context, mfa_command_list **out_list) {
  return mfa::abi_call([&] {
    mfa::require_arg(context, "context");
    mfa::require_arg(out_list, "out_list");
    auto list = std::make_unique<mfa_command_list>();
    list->context = context->impl;
    list->context->make_current();
    mfa::check_cuda(mfa::driver().cuStreamCreate(&list->recording_stream, mfa::CU_STREAM_NON_BLOCKING),
                    "cuStreamCreate");
    *out_list = list.release();
  });
}

MFA_API mfa_status mfa_command_list_destroy(mfa_command_list *list) {
  return mfa::abi_call([&] { delete list; });
}

MFA_API mfa_status mfa_command_list_begin(mfa_command_list *list, void **out_recording_stream) {
  return mfa::abi_call([&] {
    mfa::require_arg(list, "list");
    mfa::require_arg(out_recording_stream, "out_recording_stream");
    mfa::require(!list->recording, MFA_STATUS_INVALID_STATE, "the command list is already recording");
    list->context->make_current();
    // Only this thread's capture is affected, so other threads may keep launching work meanwhile.
    mfa::check_cuda(mfa::driver().cuStreamBeginCapture(list->recording_stream, mfa::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL),
                    "cuStreamBeginCapture");
    list->release_graph();
    list->recording = true;
    *out_recording_stream = list->recording_stream;
  });
}

MFA_API mfa_status mfa_command_list_end(mfa_command_list *list) {
  return mfa::abi_call([&] {
    mfa::require_arg(list, "list");
    mfa::require(list->recording, MFA_STATUS_INVALID_STATE, "the command list is not recording (call begin first)");
    list->context->make_current();
    const mfa::DriverApi &api = mfa::driver();
    list->recording = false;
    mfa::check_cuda(api.cuStreamEndCapture(list->recording_stream, &list->graph), "cuStreamEndCapture");
    size_t nodes = 0;
    mfa::check_cuda(api.cuGraphGetNodes(list->graph, nullptr, &nodes), "cuGraphGetNodes");
    list->launches = static_cast<int64_t>(nodes);
    mfa::check_cuda(api.cuGraphInstantiateWithFlags(&list->executable, list->graph, 0), "cuGraphInstantiate");
  });
}

MFA_API mfa_status mfa_command_list_launch(mfa_command_list *list, void *stream) {
  return mfa::abi_call([&] {
    mfa::require_arg(list, "list");
    mfa::require(list->executable != nullptr, MFA_STATUS_INVALID_STATE,
                 "the command list has no recorded work (call begin, encode, end first)");
    list->context->make_current();
    mfa::check_cuda(mfa::driver().cuGraphLaunch(list->executable, static_cast<mfa::CUstream>(stream)),
                    "cuGraphLaunch");
  });
}

MFA_API mfa_status mfa_command_list_get_count(const mfa_command_list *list, int64_t *out_count) {
  return mfa::abi_call([&] {
    mfa::require_arg(list, "list");
    mfa::require_arg(out_count, "out_count");
    *out_count = list->launches;
  });
}

}  // extern "C"
