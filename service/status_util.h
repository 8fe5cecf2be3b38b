// The one place where the core's absl::Status becomes a gRPC status.
#ifndef MATCHD_SERVICE_STATUS_UTIL_H_
#define MATCHD_SERVICE_STATUS_UTIL_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace matchd {

// Same code, same message. The codes of absl and gRPC share their numbers.
grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace matchd

#endif  // MATCHD_SERVICE_STATUS_UTIL_H_
