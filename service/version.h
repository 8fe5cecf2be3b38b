// What a build of matchd is: its version and the libraries it runs on, for
// --version, the startup log and the matchd_build_info metric.
#ifndef MATCHD_SERVICE_VERSION_H_
#define MATCHD_SERVICE_VERSION_H_

#include <string>

#include "absl/strings/string_view.h"

namespace matchd {

// The project's version (CMake's PROJECT_VERSION), e.g. "0.1.0".
const char* Version();
// The gRPC version linked at run time, e.g. "1.51.1".
std::string GrpcVersion();
// Where matchd's build took gRPC from: "system" (Debian's packages, built
// without NDEBUG) or the MATCHD_GRPC_PREFIX it was configured with (the
// release build of scripts/build-release-grpc.sh). Both say 1.51.1.
const char* GrpcSource();
// "matchd 0.1.0 (gRPC 1.51.1 from system, protobuf 3.21.12)": what --version prints.
std::string VersionLine(absl::string_view program);

}  // namespace matchd

#endif  // MATCHD_SERVICE_VERSION_H_
