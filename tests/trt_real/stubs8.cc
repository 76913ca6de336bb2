// TensorRT 8.x bindings also link 4 C++ symbols of the UFF and Caffe parsers (libnvparsers.so.8).
namespace nvuffparser {
enum class FieldType : int {};
class IUffParser;
IUffParser *createUffParser() { return nullptr; }
class FieldMap {
 public:
  FieldMap(const char *, const void *, FieldType, int);
};
FieldMap::FieldMap(const char *, const void *, FieldType, int) {}
}  // namespace nvuffparser
namespace nvcaffeparser1 {
class ICaffeParser;
ICaffeParser *createCaffeParser() { return nullptr; }
void shutdownProtobufLibrary() {}
}  // namespace nvcaffeparser1
