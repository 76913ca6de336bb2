/* Stand-ins for the 9 C entry points the TensorRT Python bindings link (libnvinfer,
 * libnvonnxparser, libnvinfer_plugin). Everything else is reached through vtables, so these
 * are enough to import the real pybind module; every factory returns NULL, so trt.Builder()
 * and trt.Runtime() raise "factory function returned nullptr". Compiled at test time with the
 * soname of each major version (tests/test_trt_real_bindings.py). */
void *createInferBuilder_INTERNAL(void *logger, int version) { return 0; }
void *createInferRuntime_INTERNAL(void *logger, int version) { return 0; }
void *createInferRefitter_INTERNAL(void *engine, void *logger, int version) { return 0; }
void *createNvOnnxParser_INTERNAL(void *network, void *logger, int version) { return 0; }
void *createNvOnnxParserRefitter_INTERNAL(void *refitter, void *logger, int version) { return 0; }
int getNvOnnxParserVersion(void) { return 0; }
void *getPluginRegistry(void) { return 0; }
void *getBuilderPluginRegistry(int capability) { return 0; }
int initLibNvInferPlugins(void *logger, const char *ns) { return 0; }
