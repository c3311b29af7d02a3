// LMS (k-diffusion's linear multistep), diffusers' LMSDiscreteScheduler:
//   d_i = (x − x0)/σ_i,  x_next = x + Σ_k c_k·d_{i−k},  c_k = ∫_{σ_i}^{σ_{i+1}} ℓ_k(τ) dτ,
// ℓ_k the Lagrange basis over σ_i, σ_{i−1}, ... (order min(i+1, 4)). Own keys: use_karras_sigmas.
// Started mid-schedule (img2img) the order is still min(i+1, 4) on the absolute index while the history holds
// fewer derivatives; diffusers zips coefficients with the history, so only the leading ones are used — kept.
#include <deque>

#include "models/schedulers/common.h"

namespace rt::sd::sched {
namespace {

// QUADPACK's 21-point Gauss–Kronrod rule, which SciPy's quad applies first; for the Lagrange basis of degree < 4
// it is exact, so quad returns this first estimate.
template <typename F>
double gauss_kronrod_21(F f, double a, double b) {
  static const double xgk[11] = {0.995657163025808080735527280689003, 0.973906528517171720077964012084452, 0.930157491355708226001207180059508,
                                 0.865063366688984510732096688423493, 0.780817726586416897063717578345042, 0.679409568299024406234327365114874,
                                 0.562757134668604683339000099272694, 0.433395394129247190799265943165784, 0.294392862701460198131126603103866,
                                 0.148874338981631210884826001129720, 0.0};
  static const double wgk[11] = {0.011694638867371874278064396062192, 0.032558162307964727478818972459390, 0.054755896574351996031381300244580,
                                 0.075039674810919952767043140916190, 0.093125454583697605535065465083366, 0.109387158802297641899210590325805,
                                 0.123491976262065851077600525806700, 0.134709217311473325928054001771707, 0.142775938577060080797094273138717,
                                 0.147739104901338491374841515972068, 0.149445554002916905664936468389821};
  const double centr = 0.5 * (a + b), hlgth = 0.5 * (b - a);
  double resk = wgk[10] * f(centr);
  for (int j = 1; j <= 5; ++j) {  // Gauss nodes first, as dqk21 orders its sums
    const int jtw = 2 * j - 1;
    const double absc = hlgth * xgk[jtw];
    resk += wgk[jtw] * (f(centr - absc) + f(centr + absc));
  }
  for (int j = 1; j <= 5; ++j) {
    const int jtwm1 = 2 * j - 2;
    const double absc = hlgth * xgk[jtwm1];
    resk += wgk[jtwm1] * (f(centr - absc) + f(centr + absc));
  }
  return resk * hlgth;
}

class LMS : public SigmaScheduler {
  static constexpr int64_t kOrder = 4;  // step()'s `order` argument, as the pipelines call it
  bool karras_;
  std::deque<at::Tensor> derivatives_;

 public:
  explicit LMS(const json& c) : SigmaScheduler(c, "LMSDiscreteScheduler", {"use_karras_sigmas"}) {
    karras_ = key<bool>(cfg_, "use_karras_sigmas", false);
  }
  std::string kind() const override { return "lms"; }

  void compute_timesteps(int64_t n) override {
    std::vector<double> ts, sg;
    spaced_sigmas(n, karras_, ts, sg);
    std::vector<float> tf(ts.begin(), ts.end()), sf(sg.begin(), sg.end());
    finish_schedule(tf, sf);
  }
  void reset_run() override { derivatives_.clear(); }

  // ∫ ℓ_cur over [σ_t, σ_{t+1}], ℓ_cur over σ_t, σ_{t−1}, ...; the basis in float32 like diffusers' tensor arithmetic.
  double coefficient(int64_t ord, int64_t t, int64_t cur) const {
    auto basis = [&](double tau) {
      const float tf = static_cast<float>(tau);
      float prod = 1.0f;
      for (int64_t k = 0; k < ord; ++k) {
        if (k == cur) continue;
        prod = prod * ((tf - sigma(t - k)) / (sigma(t - cur) - sigma(t - k)));
      }
      return static_cast<double>(prod);
    };
    return gauss_kronrod_21(basis, sigma(t), sigma(t + 1));
  }

  StepResult step(const at::Tensor& out, int64_t i, const at::Tensor& sample, const at::Tensor&, at::Generator*) override {
    check_index(i, "LMS step");
    check_order(i, "LMS step");
    const float s = sigma(i);
    StepResult r;
    // 1. x0 and the ODE derivative d = (x − x0)/σ, kept for the last 4 steps.
    r.pred_original_sample = x0_from(out, sample, s);
    derivatives_.push_back((sample - r.pred_original_sample) / s);
    while (static_cast<int64_t>(derivatives_.size()) > kOrder) derivatives_.pop_front();
    // 2. Order min(i+1, 4) on the absolute index; coefficients paired with the newest derivatives first.
    const int64_t ord = std::min(i + 1, kOrder);
    const int64_t used = std::min<int64_t>(ord, derivatives_.size());
    at::Tensor acc;
    for (int64_t k = 0; k < used; ++k) {
      at::Tensor term = coefficient(ord, i, k) * derivatives_[derivatives_.size() - 1 - k];
      acc = acc.defined() ? acc + term : term;
    }
    // 3. x_next = x + Σ c_k·d_{i−k}.
    r.prev_sample = sample + acc;
    return r;
  }
};

}  // namespace

std::unique_ptr<Scheduler> make_lms(const json& c) { return std::make_unique<LMS>(c); }

}  // namespace rt::sd::sched
