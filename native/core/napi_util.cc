#include "core/napi_util.h"

namespace rt {

namespace {
std::string what_arrived(const Napi::Value& v) {
  switch (v.Type()) {
    case napi_undefined: return "undefined";
    case napi_null: return "null";
    case napi_boolean: return "a boolean";
    case napi_number: return "a number";
    case napi_string: return "a string";
    case napi_object: return v.IsArray() ? "an array" : "an object";
    case napi_function: return "a function";
    default: return "a value of another type";
  }
}
[[noreturn]] void bad(const Napi::CallbackInfo& info, const char* name, const char* expected, const Napi::Value& v) {
  throw Napi::TypeError::New(info.Env(), std::string(name) + ": expected " + expected + ", got " + what_arrived(v));
}
}  // namespace

std::string arg_string(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (!info[i].IsString()) bad(info, name, "a string", info[i]);
  return info[i].As<Napi::String>().Utf8Value();
}
double arg_number(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (!info[i].IsNumber()) bad(info, name, "a number", info[i]);
  return info[i].As<Napi::Number>().DoubleValue();
}
bool arg_bool(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (!info[i].IsBoolean()) bad(info, name, "a boolean", info[i]);
  return info[i].As<Napi::Boolean>().Value();
}
json arg_json(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (info[i].IsUndefined() || info[i].IsNull()) return json::object();
  if (!info[i].IsString()) bad(info, name, "a JSON string", info[i]);
  try {
    return json::parse(info[i].As<Napi::String>().Utf8Value());
  } catch (const std::exception& e) {
    throw Napi::TypeError::New(info.Env(), std::string(name) + ": invalid JSON (" + e.what() + ")");
  }
}
std::vector<int64_t> arg_shape(const Napi::CallbackInfo& info, size_t i, const char* name) {
  if (!info[i].IsArray()) bad(info, name, "an array of non-negative integers", info[i]);
  auto a = info[i].As<Napi::Array>();
  std::vector<int64_t> out;
  for (uint32_t k = 0; k < a.Length(); ++k) {
    Napi::Value v = a.Get(k);
    if (!v.IsNumber()) bad(info, name, "an array of non-negative integers", v);
    double d = v.As<Napi::Number>().DoubleValue();
    if (d < 0 || d != static_cast<double>(static_cast<int64_t>(d))) bad(info, name, "an array of non-negative integers", v);
    out.push_back(static_cast<int64_t>(d));
  }
  return out;
}

Napi::Value json_to_js(Napi::Env env, const json& j) {
  switch (j.type()) {
    case json::value_t::null: return env.Null();
    case json::value_t::boolean: return Napi::Boolean::New(env, j.get<bool>());
    case json::value_t::number_integer:
    case json::value_t::number_unsigned:
    case json::value_t::number_float: return Napi::Number::New(env, j.get<double>());
    case json::value_t::string: return Napi::String::New(env, j.get<std::string>());
    case json::value_t::array: {
      auto a = Napi::Array::New(env, j.size());
      for (size_t i = 0; i < j.size(); ++i) a.Set(static_cast<uint32_t>(i), json_to_js(env, j[i]));
      return a;
    }
    case json::value_t::object: {
      auto o = Napi::Object::New(env);
      for (auto it = j.begin(); it != j.end(); ++it) o.Set(it.key(), json_to_js(env, it.value()));
      return o;
    }
    default: return env.Undefined();
  }
}

}  // namespace rt
