#include "service/health.h"

#include <algorithm>

namespace matchd {

void HealthBoard::Set(const std::string& service, bool serving) {
  const ServingStatus status = serving ? grpc::health::v1::HealthCheckResponse::SERVING
                                       : grpc::health::v1::HealthCheckResponse::NOT_SERVING;
  std::vector<std::shared_ptr<Listener>> notify;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (shut_down_) return;
    auto [it, inserted] = status_.emplace(service, status);
    if (!inserted && it->second == status) return;
    it->second = status;
    for (const auto& [name, listener] : watchers_) {
      if (name == service) notify.push_back(listener);
    }
  }
  // Outside the lock: a listener posts to its loop.
  for (const auto& listener : notify) listener->Notify(status);
}

std::optional<ServingStatus> HealthBoard::Get(const std::string& service) const {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = status_.find(service);
  if (it == status_.end()) return std::nullopt;
  return it->second;
}

std::optional<ServingStatus> HealthBoard::Watch(const std::string& service,
                                                std::shared_ptr<Listener> listener) {
  std::lock_guard<std::mutex> lock(mu_);
  if (shut_down_) return std::nullopt;
  watchers_.emplace_back(service, std::move(listener));
  auto it = status_.find(service);
  return it == status_.end() ? grpc::health::v1::HealthCheckResponse::SERVICE_UNKNOWN
                             : it->second;
}

void HealthBoard::Unwatch(const Listener* listener) {
  std::lock_guard<std::mutex> lock(mu_);
  watchers_.erase(std::remove_if(watchers_.begin(), watchers_.end(),
                                 [listener](const auto& w) { return w.second.get() == listener; }),
                  watchers_.end());
}

void HealthBoard::Shutdown() {
  std::vector<std::shared_ptr<Listener>> watchers;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (shut_down_) return;
    shut_down_ = true;
    for (auto& [name, status] : status_) {
      status = grpc::health::v1::HealthCheckResponse::NOT_SERVING;
    }
    for (auto& w : watchers_) watchers.push_back(std::move(w.second));
    watchers_.clear();
  }
  for (const auto& listener : watchers) {
    listener->Notify(grpc::health::v1::HealthCheckResponse::NOT_SERVING);
    listener->Close();
  }
}

}  // namespace matchd
