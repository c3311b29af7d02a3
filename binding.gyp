{
  "targets": [
    {
      "target_name": "roundtrip",
      "sources": ["<!@(node scripts/gyp-config.js sources)"],
      "include_dirs": [
        "<!(node -p \"require('node-addon-api').include_dir\")",
        "native",
        "<!@(node scripts/gyp-config.js include)"
      ],
      "libraries": ["<!@(node scripts/gyp-config.js libs)"],
      "defines": [
        "NAPI_VERSION=8",
        "NODE_ADDON_API_CPP_EXCEPTIONS",
        "NODE_ADDON_API_CPP_EXCEPTIONS_ALL",
        "NODE_ADDON_API_DISABLE_DEPRECATED",
        "_GLIBCXX_USE_CXX11_ABI=1"
      ],
      "cflags_cc!": ["-fno-exceptions", "-fno-rtti", "-std=gnu++17"],
      "cflags_cc": ["-std=c++17", "-fexceptions", "-frtti", "-O2", "-include", "../native/core/pch.h"],
      "ldflags": ["-Wl,-z,now"]
    }
  ]
}
