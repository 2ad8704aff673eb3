// What tests/global-setup.mjs provides to the test files (`inject("stack")` in helpers.mjs), for
// tsc: vitest types `provide`/`inject` by this interface.
import "vitest";

declare module "vitest" {
  export interface ProvidedContext {
    /** The shared local stack's addresses and credentials. */
    stack: {
      /** The Worker's apex, `http://localhost:<port>`. */
      url: string;
      port: number;
      /** The local cloud (its Cloudflare API is under `${apiBase}`). */
      cloudUrl: string;
      apiBase: string;
      /** The local cloud's API token. */
      token: string;
      /** The admin API's bearer token. */
      adminToken: string;
      /** The JWT master key, `kid:secret`. */
      jwtKey: string;
      controlDatabaseId: string;
      accountId: string;
      stateDir: string;
      /** Tenant bindings per binding host. */
      hostCapacity: number;
    };
  }
}
