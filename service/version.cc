#include "service/version.h"

#include <google/protobuf/stubs/common.h>
#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"

#ifndef MATCHD_VERSION
#error "MATCHD_VERSION is set by CMake (PROJECT_VERSION)"
#endif
#ifndef MATCHD_GRPC_SOURCE
#error "MATCHD_GRPC_SOURCE is set by CMake"
#endif

namespace matchd {

const char* Version() { return MATCHD_VERSION; }

std::string GrpcVersion() { return grpc::Version(); }

const char* GrpcSource() { return MATCHD_GRPC_SOURCE; }

std::string VersionLine(absl::string_view program) {
  return absl::StrCat(program, " ", Version(), " (gRPC ", GrpcVersion(), " from ", GrpcSource(),
                      ", protobuf ",
                      google::protobuf::internal::VersionString(GOOGLE_PROTOBUF_VERSION), ")");
}

}  // namespace matchd
