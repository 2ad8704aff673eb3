// What the local cloud's Miniflare plugins share (dispatch-plugin.mjs, r2-plugin.mjs,
// ratelimit-plugin.mjs): each gives a Worker a binding whose value is a workerd *wrapped
// binding*, the default export of a small internal module called with the binding's inner
// bindings. A binding names its plugin in an `unsafeBindings` entry; Miniflare loads the plugin
// file itself.

/**
 * The `unsafeBindings` entry (Miniflare v4-style Worker options) for one binding of a plugin.
 * @param {string} file the plugin's absolute path (Miniflare loads it with `require.resolve`)
 * @param {string} plugin the plugin's name
 * @param {string} name the binding's name
 * @param {string} type the binding's type
 * @param {Record<string, unknown>} options what the plugin needs to build it
 */
export function pluginBinding(file, plugin, name, type, options) {
  return { name, type, plugin: { package: file, name: plugin }, options };
}

/**
 * The env entries of a Worker's options that are plugin `plugin`'s bindings, as [name, binding].
 * @param {string} plugin
 * @returns {(options: any) => [string, any][]}
 */
export function boundBy(plugin) {
  return (options) => Object.entries(options.config?.env ?? {}).filter(([, b]) => b?.dev?.plugin?.name === plugin);
}

/**
 * A plugin's `getExtensions`: its wrapped binding's module, when any Worker has one of its bindings.
 * @param {(options: any) => [string, any][]} ours
 * @param {string} moduleName
 * @param {string} esModule
 */
export function moduleExtension(ours, moduleName, esModule) {
  return ({ options }) => (options.some((o) => ours(o).length > 0) ? [{ modules: [{ name: moduleName, esModule, internal: true }] }] : []);
}
