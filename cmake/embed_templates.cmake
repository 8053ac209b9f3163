# Turns every file under TEMPLATE_DIR/sigattn into a raw string constant in OUTPUT, keyed by its
# include path ("sigattn/<name>"), so NVRTC receives the kernel headers from memory.
file(GLOB files RELATIVE ${TEMPLATE_DIR} ${TEMPLATE_DIR}/sigattn/*)
list(SORT files)
set(body "")
foreach(name IN LISTS files)
  file(READ ${TEMPLATE_DIR}/${name} content)
  string(APPEND body "    {\"${name}\", R\"sigattn_embed(${content})sigattn_embed\"},\n")
endforeach()
file(WRITE ${OUTPUT}.tmp
"// Generated from templates/ at build time. Do not edit.\n#include \"generator/template_store.hpp\"\n\nnamespace sigattn::gen {\n\nconst std::vector<EmbeddedTemplate>& embedded_templates() {\n  static const std::vector<EmbeddedTemplate> templates = {\n${body}  };\n  return templates;\n}\n\n}  // namespace sigattn::gen\n")
file(COPY_FILE ${OUTPUT}.tmp ${OUTPUT} ONLY_IF_DIFFERENT)
file(REMOVE ${OUTPUT}.tmp)
